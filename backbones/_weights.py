"""Loading weights, one path for every backbone factory: ``pretrained`` names a state dict — the library's
published ImageNet weights (``True``: from its cache, else the network) or a file — and :func:`load_weights`
loads it strictly, saying what does not fit."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Keys that are harmless to miss: FrozenBatchNorm2d has no counter, older checkpoints lack it.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` with ``torch.load(..., weights_only=True)`` (or safetensors).

    Accepts a bare state dict, a Lightning checkpoint (``"state_dict"``) or a ``{"model": ...}``
    wrapper, and strips DDP's ``module.`` prefix.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decoding failure is the same user problem
        raise ValueError(f"cannot read weights file {str(path)!r}: {type(err).__name__}: {err}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a state dict of tensors")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _listing(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def weight_problems(
    expected: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor], drop: Iterable[str] = ()
) -> list[str]:
    """What keeps ``state_dict`` from loading strictly where ``expected`` is the model's own state dict.

    Keys under the ``drop`` prefixes are ignored: they are expected in the weights but have no place
    in the model (the classifier of an ImageNet checkpoint, layers past the deepest requested level).
    """
    drop = tuple(drop)
    state = {k: v for k, v in state_dict.items() if not k.startswith(drop)}
    missing = {
        k for k in expected if k not in state and not k.startswith(drop) and not k.endswith(_IGNORED_SUFFIXES)
    }
    unexpected = {k for k in state if k not in expected and not k.endswith(_IGNORED_SUFFIXES)}
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (file vs model): {_listing(mismatched)}")
    return problems


def non_finite(state_dict: Mapping[str, Any]) -> list[str]:
    """The names of a state dict's floating-point tensors that hold a NaN or an infinity."""
    return [name for name, value in state_dict.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all()]


def refuse_non_finite(state_dict: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` if a tensor of ``state_dict`` holds a NaN or an infinity: such weights
    predict nothing, and scoring or shipping them would pass for a result."""
    bad = non_finite(state_dict)
    if bad:
        raise ValueError(f"{what} are not finite ({len(bad)} of {len(state_dict)} tensors hold NaN or infinity: "
                         f"{bad[0]}, ...): the run that wrote them diverged; take an earlier checkpoint, or train "
                         "again with a lower learning rate")


def load_weights(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str, drop: Iterable[str] = ()
) -> None:
    """Load ``state_dict`` into ``module`` strictly, after dropping keys under the ``drop`` prefixes.

    Raises:
        ValueError: a key is missing or unexpected, or a tensor's shape differs; the message lists them
            and names ``source`` (what the weights are, e.g. a file name).
    """
    own = module.state_dict()
    problems = weight_problems(own, state_dict, drop)
    if problems:
        raise ValueError(f"weights {source} do not fit {type(module).__name__}: " + "; ".join(problems))
    refuse_non_finite(state_dict, f"weights {source}")
    drop = tuple(drop)
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own and not k.startswith(drop)}, strict=False)


@dataclass(frozen=True)
class LibraryWeights:
    """A library's published ImageNet weights of one backbone.

    Attributes:
        name: What they are (``torchvision's ImageNet weights for mobilenet_v2 (...)``).
        load: Their state dict, from the library's cache or else the network.
        offline: How to provide them without a network (where the library's cache looks).
    """

    name: str
    load: Callable[[], Mapping[str, torch.Tensor]]
    offline: str


def pretrained_weights(pretrained: bool | str | os.PathLike, library: Callable[[], LibraryWeights]
                       ) -> tuple[dict[str, torch.Tensor], str] | None:
    """The state dict a backbone's ``pretrained`` option names, and what it is (for error messages): None for
    ``False``, the library's ImageNet weights for ``True``, a file's for a path (:func:`read_state_dict`).

    Raises:
        FileNotFoundError: the library's weights are neither cached nor downloadable; says how to provide them.
        ValueError: the file is not a state dict.
    """
    if pretrained is False or pretrained is None:
        return None
    if pretrained is not True:
        return read_state_dict(pretrained), repr(str(pretrained))
    weights = library()
    try:
        return dict(weights.load()), weights.name
    except Exception as err:  # noqa: BLE001 - caches and downloads fail in many types (urllib, OS, huggingface_hub)
        raise FileNotFoundError(
            f"{weights.name} are not in the cache here and could not be downloaded ({type(err).__name__}: {err}). "
            f"{weights.offline}, or pass pretrained=<path to a state dict>."
        ) from None


def torchvision_weights(arch: str) -> LibraryWeights:
    """torchvision's default ImageNet weights for ``arch``, kept in the torch hub cache."""
    from torchvision.models import get_model_weights

    weights = get_model_weights(arch).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    return LibraryWeights(f"torchvision's ImageNet weights for {arch} ({weights})",
                          lambda: weights.get_state_dict(progress=True, check_hash=True, weights_only=True),
                          f"Download {weights.url} and put it at {cache} (or set TORCH_HOME)")
