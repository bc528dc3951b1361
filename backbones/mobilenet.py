"""MobileNetV2 (Sandler et al. 2018) and MobileNetV3 (Howard et al. 2019), on torchvision's models.

MobileNetV2: inverted residuals with linear bottlenecks, expansion 6; stages of 16, 24, 32, 64, 96,
160 and 320 channels and a 1280-channel last conv (all scaled by ``width_mult``). torchvision
publishes ImageNet weights for width 1.0. MobileNetV3 adds squeeze-excite and hard-swish to a
NAS-found layout; ``reduced_tail`` halves the last stage (the SSDLite backbone).

Levels (width 1.0): ``C1``..``C5`` at strides 2..32 with 16/24/32/96/1280 channels (V2),
16/24/40/112/960 (V3-Large), 16/16/24/48/576 (V3-Small); at ``feature_location="expansion"`` V3-Large's
``C4`` is the 672-channel expansion that SSDLite taps.
"""

from functools import partial

from ._registry import register_backbone
from ._torchvision import TorchvisionBackbone

register_backbone("mobilenet_v2")(partial(TorchvisionBackbone, "mobilenet_v2"))
for _width in ("035", "050", "075", "140"):
    register_backbone(f"mobilenet_v2_{_width}")(
        partial(TorchvisionBackbone, "mobilenet_v2", width_mult=int(_width) / 100)
    )
register_backbone("mobilenet_v3_large")(partial(TorchvisionBackbone, "mobilenet_v3_large"))
register_backbone("mobilenet_v3_small")(partial(TorchvisionBackbone, "mobilenet_v3_small"))
