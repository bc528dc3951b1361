"""The MobileNets: V1 (Howard et al. 2017) on timm's definition, V2 (Sandler et al. 2018) and V3
(Howard et al. 2019) on torchvision's, V4 (Qin et al. 2024) on timm's.

MobileNetV1: a stride-2 stem and 13 depthwise-separable layers (3x3 depthwise, 1x1 pointwise, batch
norm and ReLU6 after each) of 64, 128, 128, 256, 256, 512 (x6) and 1024 (x2) channels, all scaled by
the width multiplier alpha (0.25, 0.5, 0.75, 1.0, 1.25); the resolution multiplier rho is the input
size. ``C4`` is the 11th layer's output (512 channels, stride 16) and ``C5`` the 13th's (1024, stride
32): the two maps MobileNet-SSD (Howard et al. 2017, section 4.4) and SSDLite (Sandler et al. 2018)
put their first heads on. timm publishes ImageNet weights for widths 1.0 and 1.25.

MobileNetV2: inverted residuals with linear bottlenecks, expansion 6; stages of 16, 24, 32, 64, 96,
160 and 320 channels and a 1280-channel last conv (all scaled by ``width_mult``). torchvision
publishes ImageNet weights for width 1.0. MobileNetV3 adds squeeze-excite and hard-swish to a
NAS-found layout; ``reduced_tail`` halves the last stage (the SSDLite backbone). MobileNetV4's
universal inverted bottlenecks (conv small / medium / large) are timm's; timm cannot tap them at
their expansion layers.

Levels (width 1.0): ``C1``..``C5`` at strides 2..32 with 32/64/128/512/1024 channels (V1),
16/24/32/96/1280 (V2), 16/24/40/112/960 (V3-Large), 16/16/24/48/576 (V3-Small), 32/32/64/96/960
(V4 conv small); at ``feature_location="expansion"`` V3-Large's ``C4`` is the 672-channel expansion
that SSDLite taps.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from timm.models.efficientnet import _gen_mobilenet_v1

from ._features import FeatureLocation
from ._registry import register_backbone
from ._timm import TimmBackbone
from ._torchvision import TorchvisionBackbone

MOBILENET_V1_WIDTHS = {"025": 0.25, "050": 0.5, "075": 0.75, "": 1.0, "125": 1.25}
_TIMM_MOBILENET_V1 = {1.0: "mobilenetv1_100", 1.25: "mobilenetv1_125"}  # the widths timm registers, with weights


class MobileNetV1(TimmBackbone):
    """MobileNetV1 at width multiplier ``width_mult``, on timm's definition, as a feature pyramid.

    Args:
        width_mult: The width multiplier alpha: 0.25, 0.5, 0.75, 1.0 or 1.25 (timm's ImageNet weights
            exist for 1.0 and 1.25), or any other positive value (channels rounded to multiples of 8).
        pretrained, levels, output_stride, frozen_stages, freeze_bn: as for every backbone.
        feature_location: ``"block"`` only: depthwise-separable layers have no expansion layer.
    """

    def __init__(
        self,
        width_mult: float = 1.0,
        pretrained: bool | str = False,
        levels: Sequence[int] | None = None,
        output_stride: int = 32,
        feature_location: FeatureLocation = "block",
        frozen_stages: int = 0,
        freeze_bn: bool = False,
    ):
        if not width_mult > 0:
            raise ValueError(f"MobileNetV1's width_mult must be positive, got {width_mult}")
        if feature_location != "block":
            raise ValueError(
                "MobileNetV1's depthwise-separable layers have no expansion layer: feature_location must "
                f"be 'block', got {feature_location!r}"
            )
        timm_name = _TIMM_MOBILENET_V1.get(width_mult)
        if pretrained is True and timm_name is None:
            raise ValueError(
                f"timm publishes ImageNet weights for MobileNetV1 at widths 1.0 and 1.25, not {width_mult}; "
                "use pretrained=false or the path of matching weights"
            )
        # timm's generator with the multiplier; its name for width 1.0 gives the pretrained config (mean/std)
        builder = None if timm_name else partial(_gen_mobilenet_v1, "mobilenetv1_100", width_mult)
        super().__init__(
            timm_name or "mobilenetv1_100", pretrained, levels, output_stride, feature_location, frozen_stages,
            freeze_bn, builder=builder,
        )
        self.width_mult = width_mult


for _suffix, _width in MOBILENET_V1_WIDTHS.items():
    register_backbone("mobilenet_v1" + (f"_{_suffix}" if _suffix else ""))(partial(MobileNetV1, width_mult=_width))
register_backbone("mobilenet_v2")(partial(TorchvisionBackbone, "mobilenet_v2"))
for _width in ("035", "050", "075", "140"):
    register_backbone(f"mobilenet_v2_{_width}")(
        partial(TorchvisionBackbone, "mobilenet_v2", width_mult=int(_width) / 100)
    )
register_backbone("mobilenet_v3_large")(partial(TorchvisionBackbone, "mobilenet_v3_large"))
register_backbone("mobilenet_v3_small")(partial(TorchvisionBackbone, "mobilenet_v3_small"))
for _size in ("small", "medium", "large"):
    register_backbone(f"mobilenet_v4_conv_{_size}")(partial(TimmBackbone, f"mobilenetv4_conv_{_size}"))
