"""The backbone registry: built-ins by decorator, third-party ones by entry point, timm by prefix.

A registered factory is any callable ``factory(**options) -> Pyramid``. Packages installed beside
Kestrel register theirs with no change here, through the entry-point group ``kestrel.backbones``::

    [project.entry-points."kestrel.backbones"]
    my_net = "my_package.backbones:my_net"

Entry points are discovered and imported the first time the registry is asked for a name; a plugin
that fails to import gives a warning naming it, and the rest keep working.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections import OrderedDict
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Literal

import torch

from ._features import Pyramid, check_pyramid

ENTRY_POINT_GROUP = "kestrel.backbones"
TIMM_PREFIX = "timm:"

BackboneFactory = Callable[..., Pyramid]

_BUILTINS: dict[str, BackboneFactory] = {}
_PLUGINS: dict[str, BackboneFactory] | None = None  # None until entry points are discovered


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering ``factory(**options) -> Pyramid`` under ``name``.

    Raises:
        ValueError: ``name`` is already registered, empty, or uses the reserved ``timm:`` prefix.
    """
    if not name or name.startswith(TIMM_PREFIX) or name != name.strip():
        raise ValueError(f"invalid backbone name {name!r}")

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in _BUILTINS or name in (_PLUGINS or {}):
            raise ValueError(f"a backbone named {name!r} is already registered")
        _BUILTINS[name] = factory
        return factory

    return decorator


def _plugins() -> dict[str, BackboneFactory]:
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "an unknown distribution"
            label = f"backbone plugin {ep.name!r} ({ep.value}, from {dist})"
            if ep.name in _BUILTINS or ep.name in _PLUGINS or ep.name.startswith(TIMM_PREFIX):
                warnings.warn(f"{label} is ignored: the name is taken", stacklevel=3)
                continue
            try:
                factory = ep.load()
            except Exception as err:  # noqa: BLE001 - any failure of third-party code is a warning
                warnings.warn(f"{label} is ignored: it failed to load: {type(err).__name__}: {err}", stacklevel=3)
                continue
            if not callable(factory):
                warnings.warn(f"{label} is ignored: {ep.value} is not callable", stacklevel=3)
                continue
            _PLUGINS[ep.name] = factory
    return _PLUGINS


def reload_plugins() -> None:
    """Forget discovered entry points, so the next lookup scans the installed distributions again."""
    global _PLUGINS
    _PLUGINS = None


def list_backbones() -> list[str]:
    """Names of every registered backbone, built-ins and plugins (any ``timm:<model>`` works too)."""
    return sorted({**_BUILTINS, **_plugins()})


def get_backbone_factory(name: str) -> BackboneFactory:
    """The factory registered under ``name``; an unknown name raises ``ValueError`` listing the valid ones."""
    factory = _BUILTINS.get(name) or _plugins().get(name)
    if factory is None:
        names = list_backbones()
        close = difflib.get_close_matches(name, names, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown backbone {name!r}.{hint} Registered backbones: {', '.join(names)}; "
            f"or any timm model that supports features_only as '{TIMM_PREFIX}<model_name>'."
        )
    return factory


def build_backbone(name: str, **options) -> Pyramid:
    """Build the backbone registered as ``name`` (or ``timm:<model_name>``) with ``options``.

    Raises:
        ValueError: unknown name or option.
        TypeError: the factory returned something that breaks the pyramid contract.
    """
    if name.startswith(TIMM_PREFIX):
        from ._timm import TimmBackbone

        factory: BackboneFactory = TimmBackbone
        options = {"model_name": name[len(TIMM_PREFIX) :], **options}
    else:
        factory = get_backbone_factory(name)
    _check_options(name, factory, options)
    model = factory(**options)
    check_pyramid(model, source=f"backbone {name!r}")
    return model


def backbone_options(factory: BackboneFactory) -> list[str]:
    """Names of the keyword options ``factory`` accepts."""
    params = inspect.signature(factory).parameters.values()
    return [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _check_options(name: str, factory: BackboneFactory, options: dict) -> None:
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"backbone {name!r} has no option {', '.join(map(repr, unknown))}; its options are: "
            f"{', '.join(k for k in backbone_options(factory) if k != 'model_name')}"
        )


class Backbone(Pyramid):
    """A registered backbone chosen by name: what task configs give as ``model.backbone``.

    ``Backbone("mobilenet_v3_large", levels=[16, 32])`` builds ``build_backbone(name, ...)`` and
    forwards to it; ``feature_info``, ``mean`` and ``std`` are the built backbone's. Options specific
    to one backbone (``width_mult``, ``reduced_tail``, ...) go in ``options``.

    Args:
        name: A registered name, a plugin's, or ``timm:<model_name>``.
        pretrained: ``False``, ``True`` (the library's ImageNet weights) or a path to a state dict.
        levels: Nominal strides of the levels to return; the backbone's default (all) if None.
        output_stride: 32, or 16 / 8 to dilate the deeper stages.
        feature_location: Tap levels at block outputs or at expansion layers.
        frozen_stages: Freeze every layer up to stride ``2**frozen_stages``.
        freeze_bn: Keep batch norms in eval mode while training.
        options: Further keyword options of this backbone's factory.
    """

    def __init__(
        self,
        name: str,
        pretrained: bool | str = False,
        levels: list[int] | None = None,
        output_stride: Literal[8, 16, 32] = 32,
        feature_location: Literal["block", "expansion"] = "block",
        frozen_stages: int = 0,
        freeze_bn: bool = False,
        options: dict[str, Any] | None = None,
    ):
        super().__init__()
        # Only options that differ from their defaults are passed on, so a plugin need not take them all.
        given = {
            "pretrained": pretrained,
            "levels": None if levels is None else tuple(levels),
            "output_stride": output_stride,
            "feature_location": feature_location,
            "frozen_stages": frozen_stages,
            "freeze_bn": freeze_bn,
        }
        defaults = {k: p.default for k, p in inspect.signature(Backbone.__init__).parameters.items()}
        common = {k: v for k, v in given.items() if v != defaults[k]}
        # what rebuilds this backbone (a checkpoint stores it, see tasks._base)
        self.init_args = {"name": name, **given, "levels": levels and list(levels), "options": dict(options or {})}
        self.name = name
        self.body = build_backbone(name, **common, **(options or {}))
        self.feature_info = self.body.feature_info
        self.mean, self.std = self.body.mean, self.body.std

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.body(x)
