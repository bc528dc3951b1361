"""The options every Kestrel backbone takes, their validation, and freezing of early stages."""

from __future__ import annotations

from collections.abc import Sequence

from timm.utils.model import freeze
from torch import nn

ALL_LEVELS = (2, 4, 8, 16, 32)


def check_options(
    levels: Sequence[int] | None, output_stride: int, feature_location: str, frozen_stages: int
) -> None:
    """Raise ``ValueError`` for a value no backbone accepts."""
    if levels is not None:
        levels = tuple(levels)
        if not levels or list(levels) != sorted(set(levels)) or any(s not in ALL_LEVELS for s in levels):
            raise ValueError(f"levels must be increasing strides out of {ALL_LEVELS}, got {levels}")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if feature_location not in ("block", "expansion"):
        raise ValueError(f"feature_location must be 'block' or 'expansion', got {feature_location!r}")
    if not 0 <= frozen_stages <= 5:
        raise ValueError(f"frozen_stages must be between 0 and 5, got {frozen_stages}")


def freeze_through(root: nn.Module, last: str) -> list[str]:
    """Freeze module ``last`` of ``root`` and every module that runs before it; return their names.

    "Before" is registration order, which is forward order for the sequential bodies of MobileNets,
    EfficientNets and timm's feature models. Parameters stop requiring grad and batch norms become
    ``FrozenBatchNorm2d`` (timm's ``freeze``).
    """
    ancestors = {last.rsplit(".", i)[0] for i in range(1, last.count(".") + 1)} | {""}
    names: list[str] = []
    for name, _ in root.named_modules():
        if name == last:
            names.append(name)
            break
        if name not in ancestors and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    else:
        raise ValueError(f"{type(root).__name__} has no module {last!r}")
    freeze(root, names)
    return names
