"""Backbone modules from "another package", given to the tasks by ``class_path`` in the tests."""

from collections import OrderedDict

from torch import nn

from backbones import FeatureInfo, Level


class GoodNet(nn.Module):
    """Not a ``backbones.Pyramid`` subclass, but keeps the contract: ``feature_info`` and named levels."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 4, 1), nn.BatchNorm2d(width), nn.ReLU())
        self.c3 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1), nn.BatchNorm2d(2 * width), nn.ReLU())
        self.c4 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, 2, 1), nn.BatchNorm2d(4 * width), nn.ReLU())
        self.c5 = nn.Sequential(nn.Conv2d(4 * width, 8 * width, 3, 2, 1), nn.BatchNorm2d(8 * width), nn.ReLU())
        self.feature_info = FeatureInfo([Level("C3", 2 * width, 8, "c3"), Level("C4", 4 * width, 16, "c4"),
                                         Level("C5", 8 * width, 32, "c5")])

    def forward(self, x):
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        return OrderedDict(C3=c3, C4=c4, C5=self.c5(c4))


class NoInfoNet(GoodNet):
    """Forgets ``feature_info``."""

    def __init__(self, width: int = 16):
        super().__init__(width)
        del self.feature_info


class ListNet(GoodNet):
    """Returns a list instead of an ordered dict."""

    def forward(self, x):
        return list(super().forward(x).values())
