"""Feature pyramids over torchvision's MobileNet and EfficientNet classifiers.

The pyramid keeps torchvision's ``features`` module under its own name, so the state-dict keys of a
Kestrel backbone are torchvision's (``features.3.block.0.0.weight``) and torchvision's ImageNet
weights, and the backbone part of torchvision's detection/segmentation weights, load unchanged.
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
from ._weights import load_weights, read_state_dict, torchvision_imagenet_weights


def _conv_stride(module: nn.Module) -> int:
    """How much ``module`` reduces resolution: the product of its convolutions' strides."""
    return math.prod(m.stride[0] for m in module.modules() if isinstance(m, nn.Conv2d))


def _out_channels(module: nn.Module) -> int:
    """Channels ``module`` outputs: its last convolution's (the projection of an inverted residual)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _expansion_layer(block: nn.Module) -> str | None:
    """Name (relative to ``block``) of its 1x1 expansion layer, or None if its first conv is not one.

    The tap is the conv's parent (conv + norm + activation), as torchvision's SSDLite taps
    ``block[0]`` of MobileNetV3's last downsampling block. FusedMBConv has no separate expansion.
    """
    for name, m in block.named_modules():
        if isinstance(m, nn.Conv2d):
            is_expansion = (
                m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1 and m.out_channels > m.in_channels
            )
            return name.rpartition(".")[0] if is_expansion and "." in name else None
    return None


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


class TorchvisionBackbone(Pyramid):
    """A torchvision classifier with a sequential ``features`` body, as a multi-scale feature pyramid.

    Works for MobileNetV2 (Sandler et al. 2018), MobileNetV3 (Howard et al. 2019) and EfficientNet
    V1/V2 (Tan & Le 2019, 2021). Each level ``C{k}`` is the output of the last layer of ``features``
    at nominal stride ``2**k`` (or, with ``feature_location="expansion"``, the expansion layer of the
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
        if not isinstance(getattr(model, "features", None), nn.Sequential):
            raise ValueError(f"torchvision's {arch} has no sequential `features` body to build a pyramid from")
        self.arch = arch
        self.freeze_bn = freeze_bn

        body = model.features
        nominal = list(_cumulative_strides(body))
        taps: list[tuple[int, str, int, FeatureLocation]] = []  # (stride, module, last child run, location)
        for stride in levels:
            at_stride = [i for i, s in enumerate(nominal) if s == stride]
            if not at_stride:
                raise ValueError(f"{arch} has no layer at stride {stride}; its strides are {sorted(set(nominal))}")
            index, location, module = at_stride[-1], "block", f"features.{at_stride[-1]}"
            if feature_location == "expansion" and index + 1 < len(body):
                expansion = _expansion_layer(body[index + 1])
                if expansion is not None:
                    index, location, module = index + 1, "expansion", f"features.{index + 1}.{expansion}"
            taps.append((stride, module, index, location))
        last = max(index for _, _, index, _ in taps)
        self.features = body[: last + 1]

        if pretrained:
            if pretrained is True:
                state, source = torchvision_imagenet_weights(arch), f"torchvision's ImageNet {arch}"
            else:
                state, source = read_state_dict(pretrained), repr(str(pretrained))
            unused = ["classifier."] + [f"features.{i}." for i in range(last + 1, len(body))]
            load_weights(self, state, source, drop=unused)

        if bn_momentum is not None:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.momentum = bn_momentum
        for i, stride in enumerate(nominal[: last + 1]):
            if stride > output_stride:
                _dilate(self.features[i], stride // output_stride)
        frozen = [i for i, s in enumerate(nominal[: last + 1]) if s <= 2**frozen_stages]
        if frozen_stages and frozen:
            freeze_through(self, f"features.{frozen[-1]}")

        self._captured: dict[str, torch.Tensor] = {}
        self._block_taps: dict[int, list[str]] = {}
        info = []
        for stride, module, index, location in taps:
            name = level_name(stride)
            if location == "expansion":
                hook = functools.partial(_capture, self, name)
                self.get_submodule(module).register_forward_hook(hook)
                channels = _out_channels(self.get_submodule(module))
            else:
                self._block_taps.setdefault(index, []).append(name)
                channels = _out_channels(self.features[index])
            info.append(Level(name, channels, min(stride, output_stride), module, location))
        self.feature_info = FeatureInfo(info)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        captured = self._captured
        captured.clear()
        for i, layer in enumerate(self.features):
            x = layer(x)
            for name in self._block_taps.get(i, ()):
                captured[name] = x
        out = OrderedDict((name, captured[name]) for name in self.feature_info.names())
        captured.clear()
        return out


def _cumulative_strides(body: nn.Sequential):
    stride = 1
    for layer in body:
        stride *= _conv_stride(layer)
        yield stride
