"""The pyramid contract: what every backbone (and neck) tells the heads about its outputs.

A pyramid is an ``nn.Module`` whose forward takes a batch of images ``(N, 3, H, W)`` and returns an
ordered dict of named feature maps, one per level, and whose ``feature_info`` states for every level
its channels, its stride and the module it taps. Heads size themselves from ``feature_info`` and never
from hard-coded channel tuples (as timm's ``FeatureInfo`` and detectron2's ``ShapeSpec``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FeatureLocation = Literal["block", "expansion"]


@dataclass(frozen=True)
class Level:
    """One level of a feature pyramid.

    Attributes:
        name: Key of this level in the forward output, e.g. ``"C4"`` (nominal stride 2**4).
        channels: Channels of the map.
        stride: Input pixels per map pixel: for an input of ``H x W`` the map is
            ``ceil(H / stride) x ceil(W / stride)``.
        module: Qualified name of the module whose output is this level (``""`` if not one module).
        location: ``"block"`` for the output of the last layer at this stride, ``"expansion"`` for the
            1x1 expansion layer of the block that next halves the resolution (SSDLite taps
            MobileNetV3's stride-16 expansion, as timm's ``feature_location='expansion'``).
    """

    name: str
    channels: int
    stride: int
    module: str = ""
    location: FeatureLocation = "block"


class FeatureInfo(Sequence[Level]):
    """The validated, ordered levels of a pyramid: strides never decrease and names are unique.

    Args:
        levels: The levels, shallowest first.
    """

    def __init__(self, levels: Sequence[Level]):
        levels = tuple(levels)
        if not levels:
            raise ValueError("a pyramid needs at least one level")
        for level in levels:
            if not isinstance(level, Level):
                raise TypeError(f"feature_info entries must be backbones.Level, got {type(level).__name__}")
            if not level.name:
                raise ValueError(f"level {level} has an empty name")
            if not isinstance(level.channels, int) or level.channels <= 0:
                raise ValueError(f"level {level.name!r} has invalid channels {level.channels!r}")
            if not isinstance(level.stride, int) or level.stride <= 0:
                raise ValueError(f"level {level.name!r} has invalid stride {level.stride!r}")
            if level.location not in ("block", "expansion"):
                raise ValueError(f"level {level.name!r} has unknown location {level.location!r}")
        names = [level.name for level in levels]
        if len(set(names)) != len(names):
            raise ValueError(f"level names must be unique, got {names}")
        for prev, cur in zip(levels, levels[1:]):
            if cur.stride < prev.stride:
                raise ValueError(
                    f"strides must never decrease, but level {cur.name!r} (stride {cur.stride}) follows "
                    f"{prev.name!r} (stride {prev.stride})"
                )
        self._levels = levels

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, str):
            for level in self._levels:
                if level.name == index:
                    return level
            raise KeyError(f"no level named {index!r}; levels are {self.names()}")
        if isinstance(index, slice):
            return FeatureInfo(self._levels[index])
        return self._levels[index]

    def __len__(self) -> int:
        return len(self._levels)

    def __iter__(self) -> Iterator[Level]:
        return iter(self._levels)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FeatureInfo) and self._levels == other._levels

    def __hash__(self) -> int:
        return hash(self._levels)

    def __add__(self, other: Sequence[Level]) -> FeatureInfo:
        return FeatureInfo((*self._levels, *other))

    def __repr__(self) -> str:
        body = ", ".join(f"{lv.name}: {lv.channels}ch/{lv.stride}" for lv in self._levels)
        return f"FeatureInfo({body})"

    def names(self) -> list[str]:
        return [level.name for level in self._levels]

    def channels(self) -> list[int]:
        return [level.channels for level in self._levels]

    def strides(self) -> list[int]:
        return [level.stride for level in self._levels]

    def map_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The spatial size of every level's map for an input of ``height x width``."""
        return [(math.ceil(height / s), math.ceil(width / s)) for s in self.strides()]


class Pyramid(nn.Module):
    """Base class of everything that turns images into a feature pyramid.

    Subclasses set ``self.feature_info`` in ``__init__`` and return from ``forward`` an ordered dict
    whose keys are ``feature_info.names()``. ``mean``/``std`` are the input normalization the weights
    expect (ImageNet's unless a subclass says otherwise). With ``freeze_bn`` set, batch norms stay in
    eval mode when the pyramid trains (statistics frozen, affine parameters still learned).
    """

    feature_info: FeatureInfo
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    freeze_bn: bool = False

    @property
    def out_channels(self) -> list[int]:
        return self.feature_info.channels()

    @property
    def strides(self) -> list[int]:
        return self.feature_info.strides()

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def train(self, mode: bool = True) -> Pyramid:
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self


def check_pyramid(module: object, source: str = "backbone") -> None:
    """Raise ``TypeError`` naming what is missing if ``module`` does not satisfy the pyramid contract.

    The static half of the contract: an ``nn.Module`` with a valid ``FeatureInfo``. Whether forward
    returns an ordered dict with those names is checked by :func:`check_pyramid_output`.
    """
    problems = []
    if not isinstance(module, nn.Module):
        problems.append(f"it is a {type(module).__name__}, not a torch.nn.Module")
    info = getattr(module, "feature_info", None)
    if info is None:
        problems.append("it has no `feature_info` (a backbones.FeatureInfo of Level(name, channels, stride))")
    elif not isinstance(info, FeatureInfo):
        problems.append(f"its `feature_info` is a {type(info).__name__}, not a backbones.FeatureInfo")
    if problems:
        raise TypeError(
            f"{source} does not satisfy Kestrel's pyramid contract: {'; '.join(problems)}. Subclass "
            "backbones.Pyramid, set self.feature_info, and return an OrderedDict of the named levels."
        )


def check_pyramid_output(module: Pyramid, features: object, image_size: tuple[int, int] | None = None) -> None:
    """Raise ``TypeError``/``ValueError`` if ``features`` (the output of ``module``) breaks the contract."""
    if not isinstance(features, OrderedDict):
        raise TypeError(
            f"{type(module).__name__}.forward must return an OrderedDict of named levels, "
            f"got {type(features).__name__}"
        )
    names = module.feature_info.names()
    if list(features) != names:
        raise ValueError(f"{type(module).__name__} returned levels {list(features)}, feature_info says {names}")
    sizes = module.feature_info.map_sizes(*image_size) if image_size else [None] * len(names)
    for level, size in zip(module.feature_info, sizes):
        fmap = features[level.name]
        if fmap.shape[1] != level.channels:
            raise ValueError(
                f"{type(module).__name__} level {level.name!r} has {fmap.shape[1]} channels, "
                f"feature_info says {level.channels}"
            )
        if size is not None and tuple(fmap.shape[-2:]) != size:
            raise ValueError(
                f"{type(module).__name__} level {level.name!r} is {tuple(fmap.shape[-2:])} for a "
                f"{image_size} input, stride {level.stride} gives {size}"
            )


def ensure_pyramid(module: object, source: str = "backbone", probe_size: int = 64) -> nn.Module:
    """Check a module given as a backbone (e.g. by ``class_path`` from any package) against the contract.

    Statically (:func:`check_pyramid`), then by one forward of a ``probe_size`` square of zeros
    (:func:`check_pyramid_output`: an ordered dict of the named levels with the stated channels). A
    module without ``mean``/``std`` gets ImageNet's. Returns the module.

    Raises:
        TypeError, ValueError: what is missing or wrong, naming ``source``.
    """
    check_pyramid(module, source)
    was_training = module.training
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            features = module.eval()(torch.zeros(1, 3, probe_size, probe_size, device=device))
        check_pyramid_output(module, features)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{source} does not satisfy Kestrel's pyramid contract: {err}") from None
    finally:
        module.train(was_training)
    for name, default in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        if not hasattr(module, name):
            setattr(module, name, default)
    return module


def level_name(stride: int) -> str:
    """Name of the level at nominal stride ``2**k``: ``"C{k}"`` (the FPN paper's convention)."""
    if stride <= 0 or stride & (stride - 1):
        raise ValueError(f"a level's nominal stride must be a power of two, got {stride}")
    return f"C{stride.bit_length() - 1}"
