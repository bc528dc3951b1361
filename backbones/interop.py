"""Kestrel backbones inside other libraries: torchvision's detectors and segmentation_models_pytorch.

- :func:`torchvision_backbone`: a pyramid with an FPN on top, named and shaped as torchvision's
  ``BackboneWithFPN`` (levels ``"0"``, ``"1"``, ... and ``"pool"``; an integer ``out_channels``), so
  ``FasterRCNN``, ``RetinaNet``, ``FCOS`` and ``MaskRCNN`` take it as their ``backbone``.
- :func:`register_smp_encoders`: every registered backbone as an smp encoder ``kestrel-<name>``, so
  ``smp.DeepLabV3Plus(encoder_name="kestrel-mobilenet_v2", encoder_weights=None)``, ``smp.Unet``,
  ``smp.FPN``, ... build on it, at any encoder depth and output stride 32, 16 or 8.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._features import Pyramid
from ._registry import build_backbone, list_backbones
from .necks import FPN

SMP_PREFIX = "kestrel-"


class BackboneWithFPN(nn.Module):
    """A Kestrel pyramid with torchvision's FPN, as torchvision's detection models expect a backbone.

    The output is an ordered dict of ``out_channels``-wide maps named ``"0"``, ``"1"``, ... from the
    finest level, plus ``"pool"`` with ``extra_pool`` (torchvision's default anchor generators and
    RoI poolers assume exactly these names: four levels and ``"pool"``).

    Attributes:
        out_channels: Channels of every map (what torchvision's heads read).
        body: The Kestrel pyramid.
        fpn: The :class:`~backbones.necks.FPN` on top.
        strides: Stride of each output map.
    """

    def __init__(self, body: Pyramid, out_channels: int, extra_pool: bool):
        super().__init__()
        self.body = body
        self.fpn = FPN(body.feature_info, out_channels, extra_pool)
        self.out_channels = out_channels
        self.strides = self.fpn.feature_info.strides()
        self._names = [str(i) for i in range(len(body.feature_info))] + (["pool"] if extra_pool else [])

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.fpn(self.body(x))
        return OrderedDict(zip(self._names, features.values()))


def torchvision_backbone(
    name: str,
    out_channels: int = 256,
    levels: Sequence[int] = (4, 8, 16, 32),
    extra_pool: bool = True,
    **options: Any,
) -> BackboneWithFPN:
    """Build backbone ``name`` with an FPN for torchvision's detection models.

    Args:
        name: A registered backbone (or ``timm:<model>``).
        out_channels: Channels of every pyramid map.
        levels: The backbone's strides to use. The default four plus ``"pool"`` make the five maps
            torchvision's default anchor generators (FasterRCNN, RetinaNet, FCOS) are sized for.
        extra_pool: Add torchvision's max-pooled ``"pool"`` level.
        **options: Backbone options (``pretrained``, ``frozen_stages``, ``freeze_bn``, ...).

    Example::

        from torchvision.models.detection import FasterRCNN
        model = FasterRCNN(torchvision_backbone("mobilenet_v3_large"), num_classes=91)

    Note that torchvision's detectors normalize images themselves (``image_mean``/``image_std``
    arguments, ImageNet's by default): pass the backbone's ``body.mean`` / ``body.std`` if they differ.
    """
    return BackboneWithFPN(build_backbone(name, levels=tuple(levels), **options), out_channels, extra_pool)


# ----------------------------------------------------------------------------- segmentation_models_pytorch
def _smp_encoder_class():
    from segmentation_models_pytorch.encoders._base import EncoderMixin

    class KestrelSmpEncoder(nn.Module, EncoderMixin):
        """A Kestrel backbone with smp's encoder interface: ``forward`` gives ``[x, stride 2, ..., 2**depth]``."""

        def __init__(self, name: str, depth: int = 5, output_stride: int = 32, options: dict | None = None):
            super().__init__()
            if output_stride not in (8, 16, 32):
                raise ValueError(f"smp encoder {SMP_PREFIX}{name}: output stride must be 32, 16 or 8, "
                                 f"got {output_stride}")
            # a shallow encoder ending above the output stride needs no dilation
            dilated = output_stride if output_stride < 2**depth else 32
            self.body = build_backbone(name, levels=tuple(2**i for i in range(1, depth + 1)), output_stride=dilated,
                                       **(options or {}))
            self._depth = depth
            self._in_channels = 3
            self._output_stride = output_stride
            self._out_channels = [3, *self.body.feature_info.channels()]

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [x, *self.body(x).values()]

        def make_dilated(self, output_stride: int) -> None:
            """Already dilated when built (smp calls this after construction)."""

        def load_state_dict(self, state_dict, **kwargs):
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(("fc.", "classifier."))}
            return super().load_state_dict(state_dict, **kwargs)

    return KestrelSmpEncoder


def register_smp_encoders(names: Sequence[str] | None = None, **options: Any) -> list[str]:
    """Register Kestrel backbones as segmentation_models_pytorch encoders named ``kestrel-<name>``.

    smp fetches pretrained weights from its own hub by name, which knows nothing of Kestrel, so build
    with ``encoder_weights=None``; for ImageNet weights register with ``pretrained=True`` (or a
    state-dict path), which Kestrel loads itself when smp builds the encoder. Asking smp for named
    weights (``encoder_weights="imagenet"``) gets smp's error listing the available ones: none.

    Args:
        names: The backbones to register; every registered one by default.
        **options: Backbone options for every encoder (``pretrained``, ``frozen_stages``, ...).

    Returns:
        The smp encoder names registered.
    """
    from segmentation_models_pytorch.encoders import encoders

    encoder_class = _smp_encoder_class()
    registered = []
    for name in names if names is not None else list_backbones():
        key = f"{SMP_PREFIX}{name}"
        encoders[key] = {
            "encoder": encoder_class,
            "pretrained_settings": {},
            "params": {"name": name, "options": dict(options)},
        }
        registered.append(key)
    return registered
