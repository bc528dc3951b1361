"""EfficientNet B0-B7 (Tan & Le 2019) and EfficientNetV2 S/M/L (Tan & Le 2021) on torchvision's
models; EfficientNet-Lite0-4 on timm's.

Compound scaling of depth, width and resolution (alpha=1.2, beta=1.1, gamma=1.15) from the B0 base
(5.3M parameters, 0.39 GMACs at 224). V2 starts with Fused-MBConv stages, which have no separate
expansion layer: at ``feature_location="expansion"`` its ``C2`` and ``C3`` stay at the block output.
EfficientNet-Lite is the edge variant: no squeeze-excitation, ReLU6 instead of swish and a fixed stem
and head, which quantize well. timm publishes ImageNet weights for ``efficientnet_lite0``; for Lite1-4
only TensorFlow-ported ones, on ``timm:tf_efficientnet_lite1`` .. ``4`` (TensorFlow's "same" padding,
another network in every stride-2 layer).
"""

from functools import partial

from ._registry import register_backbone
from ._timm import TimmBackbone
from ._torchvision import TorchvisionBackbone

for _arch in [f"efficientnet_b{i}" for i in range(8)] + [f"efficientnet_v2_{s}" for s in "sml"]:
    register_backbone(_arch)(partial(TorchvisionBackbone, _arch))
for _i in range(5):
    register_backbone(f"efficientnet_lite{_i}")(partial(TimmBackbone, f"efficientnet_lite{_i}"))
