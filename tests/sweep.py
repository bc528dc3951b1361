"""Which backbones a registry sweep runs: one per factory by default, the whole registry under the ``slow`` marker
(``make test-all``)."""

from collections.abc import Iterable

import pytest

from backbones import list_backbones

# One registered name for each way Kestrel builds a backbone: torchvision's MobileNet, EfficientNet and MNASNet
# bodies; timm's MobileNetV1 generator (a width without a registered timm name), MobileNetV4, FBNet and
# EfficientNet-Lite; Once-for-All's subnets.
REPRESENTATIVES = ("mobilenet_v3_large", "efficientnet_b0", "mnasnet_050", "mobilenet_v1_050",
                   "mobilenet_v4_conv_small", "fbnetc_100", "efficientnet_lite0", "ofa_mbv3")


def sweep(names: Iterable[str], keep: Iterable[str] = REPRESENTATIVES) -> list:
    """``names`` as parameters, all but those in ``keep`` marked slow."""
    keep = set(keep)
    return [pytest.param(name, marks=() if name in keep else pytest.mark.slow) for name in names]


def backbones(*extra: str) -> list:
    """Every registered backbone (the representatives by default, the rest slow), then ``extra`` names."""
    return sweep([*list_backbones(), *extra], keep=(*REPRESENTATIVES, *extra))
