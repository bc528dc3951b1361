"""Networks found by architecture search: MNASNet (Tan et al. 2019) on torchvision's models, FBNet
(Wu et al. 2019) and FBNetV3 (Dai et al. 2021) on timm's.

MNASNet at depth multipliers 0.5, 0.75, 1.0 and 1.3, each with torchvision's ImageNet weights: a flat
stem (3x3 conv, 3x3 depthwise, 1x1 to 16 channels), six stages of inverted residuals with 3x3 and 5x5
depthwise kernels, and a 1280-channel last conv; ``C5`` is that conv, as for MobileNetV2. FBNet-C and
FBNetV3-B/D/G have timm's ImageNet weights.
"""

from functools import partial

from ._registry import register_backbone
from ._timm import TimmBackbone
from ._torchvision import TorchvisionBackbone

for _suffix, _arch in {"050": "mnasnet0_5", "075": "mnasnet0_75", "": "mnasnet1_0", "130": "mnasnet1_3"}.items():
    register_backbone("mnasnet" + (f"_{_suffix}" if _suffix else ""))(partial(TorchvisionBackbone, _arch))
for _arch in ("fbnetc_100", "fbnetv3_b", "fbnetv3_d", "fbnetv3_g"):
    register_backbone(_arch)(partial(TimmBackbone, _arch))
