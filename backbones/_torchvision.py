"""Feature pyramids over torchvision's MobileNet, EfficientNet and MNASNet classifiers.

The pyramid keeps torchvision's body (``features``; MNASNet's ``layers``) under its own name, so the
state-dict keys of a Kestrel backbone are torchvision's (``features.3.block.0.0.weight``) and
torchvision's ImageNet weights, and the backbone part of torchvision's detection/segmentation weights,
load unchanged.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from ._features import FeatureInfo, FeatureLocation, Level, Pyramid, level_name
from ._options import ALL_LEVELS, check_options, freeze_through
from ._weights import load_weights, pretrained_weights, torchvision_weights


def _conv_stride(module: nn.Module) -> int:
    """How much ``module`` reduces resolution: the product of its convolutions' strides."""
    return math.prod(m.stride[0] for m in module.modules() if isinstance(m, nn.Conv2d))


def _channels(body: Sequence[nn.Module]) -> list[int]:
    """Channels after each layer of ``body``: its last convolution's so far (norms and activations keep
    them; MNASNet's stem is a flat run of convs, norms and activations)."""
    channels, current = [], 0
    for layer in body:
        convs = [m for m in layer.modules() if isinstance(m, nn.Conv2d)]
        current = convs[-1].out_channels if convs else current
        channels.append(current)
    return channels


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _expansion_layer(block: nn.Module) -> tuple[str, int] | None:
    """Name (relative to ``block``) and channels of its 1x1 expansion layer, or None if its first conv is
    not one.

    The tap is the conv with its norm and activation: their parent where it holds just those (as
    torchvision's SSDLite taps ``block[0]`` of MobileNetV3's last downsampling block), else the last of
    them (MNASNet's blocks are one flat sequence). FusedMBConv has no separate expansion.
    """
    for name, m in block.named_modules():
        if isinstance(m, nn.Conv2d):
            is_expansion = (
                m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1 and m.out_channels > m.in_channels
            )
            if not is_expansion or "." not in name:
                return None
            parent_name, _, own = name.rpartition(".")
            siblings = list(block.get_submodule(parent_name).named_children())
            start = [n for n, _ in siblings].index(own)
            span = start + 1
            while span < len(siblings) and not _has_conv(siblings[span][1]):  # its norm and activation
                span += 1
            if start == 0 and span == len(siblings):
                return parent_name, m.out_channels
            return f"{parent_name}.{siblings[span - 1][0]}", m.out_channels
    return None


def _last_conv_index(body: nn.Sequential, arch: str) -> int:
    """Index in ``body`` where its classifier's last 1x1 conv (with its norm and activation) starts."""
    index = max(i for i, layer in enumerate(body) if _has_conv(layer))
    convs = [m for m in body[index].modules() if isinstance(m, nn.Conv2d)]
    if len(convs) != 1 or convs[0].kernel_size != (1, 1) or convs[0].stride != (1, 1):
        raise ValueError(f"torchvision's {arch} does not end in a 1x1 conv: last_conv=False does not apply to it")
    return index


def _dilate(module: nn.Module, rate: int) -> None:
    """Trade stride for dilation in every conv of ``module`` (DeepLab's atrous backbone), in place."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            m.stride = (1, 1)
            if m.kernel_size != (1, 1):
                m.dilation = (rate, rate)
                m.padding = tuple((k - 1) // 2 * rate for k in m.kernel_size)


def _capture(owner: nn.Module, name: str, module, args, output) -> None:
    # looked up at call time: torch.export (non-strict) swaps module attributes for copies while tracing
    owner._captured[name] = output


Tap = tuple[int, str, int, FeatureLocation, int]  # stride, module, index of the last layer run, location, channels


class LayerPyramid(Pyramid):
    """A pyramid over a network that runs as a sequence of named layers (torchvision's bodies, Once-for-All's
    subnets): level ``C{k}`` is the output of the last layer at nominal stride ``2**k``, or with
    ``feature_location="expansion"`` the expansion layer of the layer after it, where it has one.
    Subclasses plan the taps with :meth:`_plan`, keep the layers they need, then call :meth:`_build`."""

    @staticmethod
    def _plan(layers: Sequence[tuple[str, nn.Module]], levels: Sequence[int], feature_location: FeatureLocation,
              label: str) -> tuple[list[int], list[Tap]]:
        modules = [m for _, m in layers]
        nominal, stride = [], 1
        for m in modules:
            stride *= _conv_stride(m)
            nominal.append(stride)
        channels = _channels(modules)
        taps: list[Tap] = []
        for s in levels:
            at_stride = [i for i, n in enumerate(nominal) if n == s]
            if not at_stride:
                raise ValueError(f"{label} has no layer at stride {s}; its strides are {sorted(set(nominal))}")
            index = at_stride[-1]
            location, module, width = "block", layers[index][0], channels[index]
            if feature_location == "expansion" and index + 1 < len(layers):
                expansion = _expansion_layer(modules[index + 1])
                if expansion is not None:
                    index, location = index + 1, "expansion"
                    module, width = f"{layers[index][0]}.{expansion[0]}", expansion[1]
            taps.append((s, module, index, location, width))
        return nominal, taps

    def _build(self, names: Sequence[str], nominal: Sequence[int], taps: Sequence[Tap], output_stride: int,
               frozen_stages: int) -> None:
        """Dilate past ``output_stride``, freeze through stride ``2**frozen_stages``, hook the taps."""
        last = max(tap[2] for tap in taps)
        self._layer_names = list(names[: last + 1])
        for i, s in enumerate(nominal[: last + 1]):
            if s > output_stride:
                _dilate(self.get_submodule(names[i]), s // output_stride)
        frozen = [i for i, s in enumerate(nominal[: last + 1]) if s <= 2**frozen_stages]
        if frozen_stages and frozen:
            freeze_through(self, names[frozen[-1]])
        self._captured: dict[str, torch.Tensor] = {}
        self._block_taps: dict[int, list[str]] = {}
        info = []
        for s, module, index, location, width in taps:
            name = level_name(s)
            if location == "expansion":
                self.get_submodule(module).register_forward_hook(functools.partial(_capture, self, name))
            else:
                self._block_taps.setdefault(index, []).append(name)
            info.append(Level(name, width, min(s, output_stride), module, location))
        self.feature_info = FeatureInfo(info)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        captured = self._captured
        captured.clear()
        for i, name in enumerate(self._layer_names):
            x = self.get_submodule(name)(x)
            for level in self._block_taps.get(i, ()):
                captured[level] = x
        out = OrderedDict((name, captured[name]) for name in self.feature_info.names())
        captured.clear()
        return out


class TorchvisionBackbone(LayerPyramid):
    """A torchvision classifier with a sequential body, as a multi-scale feature pyramid.

    Works for MobileNetV2 (Sandler et al. 2018), MobileNetV3 (Howard et al. 2019), EfficientNet
    V1/V2 (Tan & Le 2019, 2021), whose body is ``features``, and MNASNet (Tan et al. 2019), whose body
    is ``layers``. Each level ``C{k}`` is the output of the last layer of the body at nominal stride
    ``2**k`` (or, with ``feature_location="expansion"``, the expansion layer of the
    block that next halves the resolution). Layers past the deepest requested level are dropped.

    Args:
        arch: torchvision model name, e.g. ``"mobilenet_v3_large"`` or ``"efficientnet_b0"``.
        pretrained: ``False``, ``True`` (torchvision's ImageNet weights, from the torch hub cache or
            the network) or the path of a state dict (a torchvision classifier's or a Kestrel
            backbone's; the classifier's keys are dropped, any other mismatch is an error).
        levels: Nominal strides of the levels to return, out of 2, 4, 8, 16, 32.
        output_stride: 32, or 16/8 to dilate the deeper stages instead of downsampling (DeepLab);
            levels deeper than this keep its resolution.
        feature_location: ``"block"`` or ``"expansion"`` (see :class:`backbones.Level`); a level whose
            next block has no separate expansion layer, and the deepest level, stay at ``"block"``.
        frozen_stages: Freeze parameters and batch-norm statistics of every layer up to nominal
            stride ``2**frozen_stages`` (0: none, 5: the whole body).
        freeze_bn: Keep every batch norm in eval mode (statistics frozen, affine still trained),
            for fine-tuning with small batches.
        width_mult: Channel multiplier (MobileNets).
        reduced_tail: Halve the channels of the last stage (MobileNetV3, as in SSDLite's backbone).
        stochastic_depth_prob: Drop-path probability (EfficientNets); torchvision's default if None.
        bn_momentum: Momentum of every batch norm's running statistics; torchvision's default (0.01
            for MobileNetV3, 0.1 otherwise) if None. Short trainings want 0.1; torchvision's SSDLite
            uses 0.03.
        last_conv: Keep the classifier's last 1x1 conv (MobileNetV2's and EfficientNet's 1280
            channels, MobileNetV3's 960 / 576, MNASNet's 1280) as the end of ``C5``. False ends the
            body at its last block, as DeepLab's MobileNetV2 feature extractor does (320 channels at
            width 1.0): a DeepLab head then costs a fraction on the deepest map.
    """

    def __init__(
        self,
        arch: str,
        pretrained: bool | str = False,
        levels: Sequence[int] = ALL_LEVELS,
        output_stride: int = 32,
        feature_location: FeatureLocation = "block",
        frozen_stages: int = 0,
        freeze_bn: bool = False,
        width_mult: float | None = None,
        reduced_tail: bool = False,
        stochastic_depth_prob: float | None = None,
        bn_momentum: float | None = None,
        last_conv: bool = True,
    ):
        super().__init__()
        check_options(levels, output_stride, feature_location, frozen_stages)
        levels = tuple(levels)
        arch_options = {"width_mult": width_mult, "stochastic_depth_prob": stochastic_depth_prob}
        arch_options = {k: v for k, v in arch_options.items() if v is not None}
        if reduced_tail:
            arch_options["reduced_tail"] = True
        if pretrained is True and (width_mult not in (None, 1.0) or reduced_tail):
            raise ValueError(
                f"torchvision's ImageNet weights for {arch} are for width 1.0 without a reduced tail; "
                f"with {arch_options} use pretrained=False or the path of matching weights"
            )
        try:
            model = torchvision.models.get_model(arch, weights=None, **arch_options)
        except TypeError as err:
            raise ValueError(f"torchvision's {arch} does not take {sorted(arch_options)}: {err}") from None
        bodies = [n for n in ("features", "layers") if isinstance(getattr(model, n, None), nn.Sequential)]
        body_name = bodies[0] if bodies else None
        if body_name is None:
            raise ValueError(f"torchvision's {arch} has no sequential `features` body to build a pyramid from")
        self.arch = arch
        self.freeze_bn = freeze_bn
        self._body_name = body_name

        body = getattr(model, body_name)
        classifier_layers = len(body)  # the classifier's body, whose keys pretrained weights have
        if not last_conv:
            body = body[: _last_conv_index(body, arch)]
        names = [f"{body_name}.{i}" for i in range(len(body))]
        nominal, taps = self._plan(list(zip(names, body)), levels, feature_location, arch)
        last = max(tap[2] for tap in taps)
        setattr(self, body_name, body[: last + 1])

        found = pretrained_weights(pretrained, lambda: torchvision_weights(arch))
        if found is not None:
            unused = ["classifier."] + [f"{body_name}.{i}." for i in range(last + 1, classifier_layers)]
            load_weights(self, *found, drop=unused)

        if bn_momentum is not None:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = bn_momentum
        self._build(names, nominal, taps, output_stride, frozen_stages)

    @property
    def body(self) -> nn.Sequential:
        """torchvision's sequential body, cut after the deepest level: ``features`` (``layers``, MNASNet)."""
        return getattr(self, self._body_name)
