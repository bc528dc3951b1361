"""Necks: modules from one pyramid's levels to another's, each stating its output ``feature_info``.

A neck is built from the ``feature_info`` of what feeds it and takes that pyramid's ordered dict;
:class:`BackboneWithNeck` joins a backbone and a neck into a pyramid of its own.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import nn
from torchvision.models.detection.ssdlite import _extra_block, _normal_init
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ._features import FeatureInfo, Level, Pyramid


class FPN(nn.Module):
    """Feature Pyramid Network (Lin et al. 2017): torchvision's ``FeaturePyramidNetwork`` over a pyramid.

    Every level becomes ``out_channels`` wide at its own stride; ``extra_pool`` adds torchvision's
    max-pooled ``"pool"`` level at twice the deepest stride (as its detection backbones do).

    Args:
        in_info: The feature info of the pyramid feeding the FPN.
        out_channels: Channels of every output level.
        extra_pool: Whether to add the ``"pool"`` level.
    """

    def __init__(self, in_info: FeatureInfo, out_channels: int = 256, extra_pool: bool = True):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(
            in_info.channels(), out_channels, extra_blocks=LastLevelMaxPool() if extra_pool else None
        )
        levels = [Level(lv.name, out_channels, lv.stride, f"fpn.layer_blocks.{i}") for i, lv in enumerate(in_info)]
        if extra_pool:
            levels.append(Level("pool", out_channels, in_info[-1].stride * 2, "fpn.extra_blocks"))
        self.feature_info = FeatureInfo(levels)

    def forward(self, features: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(features)


class SSDLiteExtra(nn.Module):
    """SSDLite's extra layers (MobileNetV2 paper, section 6.2), torchvision's blocks and init.

    Depthwise-separable stride-2 blocks (1x1 to half width, 3x3 depthwise stride 2, 1x1 out, ReLU6)
    that extend the pyramid below its deepest level: at a 320 input, from 10x10 down to 1x1.

    The output holds the ``in_info`` levels (others in the input are left out) and the new ones.

    Args:
        in_info: The levels to keep from the pyramid feeding the extra layers; they start from the deepest.
        channels: Output channels of each extra block, before ``width_mult``.
        width_mult: Channel multiplier, at least ``min_depth`` channels per block.
        min_depth: Smallest width of a block.
        norm_layer: Normalization; torchvision's SSDLite uses batch norm with eps 0.001, momentum 0.03.
    """

    def __init__(
        self,
        in_info: FeatureInfo,
        channels: Sequence[int] = (512, 256, 256, 128),
        width_mult: float = 1.0,
        min_depth: int = 16,
        norm_layer: Callable[..., nn.Module] | None = None,
    ):
        super().__init__()
        norm_layer = norm_layer or partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        widths = [max(min_depth, int(c * width_mult)) for c in channels]
        self.extra = nn.ModuleList(
            _extra_block(c_in, c_out, norm_layer) for c_in, c_out in zip([in_info[-1].channels, *widths], widths)
        )
        _normal_init(self.extra)
        last = in_info[-1]
        match = re.fullmatch(r"C(\d+)", last.name)
        names = [f"C{int(match[1]) + i}" if match else f"extra{i}" for i in range(1, len(widths) + 1)]
        self.feature_info = in_info + [
            Level(name, c, last.stride * 2**i, f"extra.{i - 1}")
            for i, (name, c) in enumerate(zip(names, widths), start=1)
        ]

    def forward(self, features: OrderedDict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        levels = len(self.feature_info) - len(self.extra)
        out = OrderedDict((level.name, features[level.name]) for level in self.feature_info[:levels])
        x = out[self.feature_info[levels - 1].name]
        for level, block in zip(self.feature_info[levels:], self.extra):
            x = block(x)
            out[level.name] = x
        return out


class BackboneWithNeck(Pyramid):
    """A backbone followed by a neck, itself a pyramid (as torchvision's ``BackboneWithFPN``).

    Args:
        body: The backbone.
        neck: A neck built from ``body.feature_info``.
    """

    def __init__(self, body: Pyramid, neck: nn.Module):
        super().__init__()
        self.body = body
        self.neck = neck
        self.feature_info = neck.feature_info
        self.mean, self.std = body.mean, body.std

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.neck(self.body(x))
