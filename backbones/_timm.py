"""Any timm model that supports ``features_only`` (MobileNetV4, EfficientNet-Lite, FBNet, ...) as a pyramid.

Registered as the ``timm:<model_name>`` prefix of the registry. Channels and strides come from timm's
own ``feature_info``; output stride and feature location are timm's ``features_only`` options.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import timm
import torch

from ._features import FeatureInfo, FeatureLocation, Level, Pyramid, level_name
from ._options import check_options, freeze_through
from ._weights import LibraryWeights, load_weights, pretrained_weights, weight_problems

Builder = Callable[..., torch.nn.Module]


def _create(model_name: str, builder: Builder | None, pretrained: bool = False, **kwargs) -> torch.nn.Module:
    if builder is None:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    return builder(pretrained=pretrained, **kwargs)


def _meta_model(model_name: str, builder: Builder | None = None, **kwargs) -> torch.nn.Module:
    """Build a timm model on the meta device: its structure and key names, with no memory or time."""
    with torch.device("meta"):
        return _create(model_name, builder, **kwargs)


def timm_weights(model_name: str, builder: Builder | None = None) -> LibraryWeights:
    """timm's published weights of ``model_name`` (the classifier's), kept in the Hugging Face cache."""
    return LibraryWeights(f"timm's pretrained weights for {model_name!r}",
                          lambda: _create(model_name, builder, pretrained=True).state_dict(),
                          "With no network, put them in the Hugging Face cache (HF_HOME; timm looks there first)")


class TimmBackbone(Pyramid):
    """A timm model built with ``features_only=True``, as a Kestrel pyramid.

    Args:
        model_name: A timm model name, e.g. ``"mobilenetv4_conv_small"``.
        pretrained: ``False``, ``True`` (timm's weights, from the Hugging Face cache or the network)
            or the path of a state dict (a timm classifier's, whose classifier keys are dropped, or a
            Kestrel backbone's).
        levels: Nominal strides of the levels to return; all the model's levels if None.
        output_stride: 32, or 16/8 where the model supports dilation.
        feature_location: ``"block"`` or ``"expansion"`` (timm's EfficientNet/MobileNet families).
        frozen_stages: Freeze every layer up to nominal stride ``2**frozen_stages`` (0: none).
        freeze_bn: Keep batch norms in eval mode while training.
        builder: What builds the model instead of ``timm.create_model(model_name, ...)``, called with
            its keyword arguments: one of timm's generators with options its registered names fix
            (MobileNetV1's channel multiplier). ``model_name`` then names the pretrained config.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool | str = False,
        levels: Sequence[int] | None = None,
        output_stride: int = 32,
        feature_location: FeatureLocation = "block",
        frozen_stages: int = 0,
        freeze_bn: bool = False,
        builder: Builder | None = None,
    ):
        super().__init__()
        check_options(levels, output_stride, feature_location, frozen_stages)
        if builder is None and model_name not in timm.list_models():
            raise ValueError(f"timm has no model {model_name!r} (see timm.list_models())")
        try:
            probe = _meta_model(model_name, builder, features_only=True)
        except Exception as err:  # noqa: BLE001 - timm raises many kinds for "cannot do features"
            raise ValueError(f"timm model {model_name!r} does not support features_only: {err}") from None
        nominal = probe.feature_info.reduction()
        if len(set(nominal)) != len(nominal) or any(r & (r - 1) for r in nominal):
            raise ValueError(
                f"timm model {model_name!r} is not a multi-scale pyramid: its feature strides are {nominal}"
            )
        levels = tuple(nominal) if levels is None else tuple(levels)
        missing = sorted(set(levels) - set(nominal))
        if missing:
            raise ValueError(f"timm model {model_name!r} has no level at stride {missing}; it has {nominal}")

        kwargs = {"features_only": True, "out_indices": tuple(nominal.index(s) for s in levels)}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if feature_location != "block":
            kwargs["feature_location"] = feature_location
        options = {k: v for k, v in kwargs.items() if k in ("output_stride", "feature_location")}
        try:
            strides = _meta_model(model_name, builder, **kwargs).feature_info.reduction()
        except Exception as err:  # noqa: BLE001
            raise ValueError(
                f"timm model {model_name!r} cannot be built with {options}: {type(err).__name__}: {err}"
            ) from None
        if max(strides) > output_stride:
            raise ValueError(f"timm model {model_name!r} ignores {options}: its strides stay {strides}")

        if pretrained is True:
            self._check_published(model_name)
        found = pretrained_weights(pretrained, lambda: timm_weights(model_name, builder))
        own = {f"model.{k}": v for k, v in _meta_model(model_name, builder, **kwargs).state_dict().items()}
        if found is None or not weight_problems(own, found[0]):
            self.model = _create(model_name, builder, **kwargs)
            if found is not None:  # a Kestrel backbone's own keys
                load_weights(self, *found)
        else:  # a timm classifier's (its published weights, or a file): timm maps them onto the feature model
            state, source = found
            full = _meta_model(model_name, builder)
            classifier = full.pretrained_cfg.get("classifier") or ()
            classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
            problems = weight_problems(full.state_dict(), state, drop=[c + "." for c in classifier])
            if problems:
                raise ValueError(
                    f"weights {source} fit neither timm's {model_name} classifier nor its feature model: "
                    f"{'; '.join(problems)}"
                )
            overlay = {"state_dict": state}
            self.model = _create(model_name, builder, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)

        if frozen_stages:
            frozen = [i for i, s in enumerate(nominal) if s <= 2**frozen_stages]
            if frozen:
                last = probe.feature_info.module_name()[frozen[-1]]
                if last not in dict(self.model.named_modules()):
                    last = last.replace(".", "_")  # FeatureListNet flattens nested names
                freeze_through(self.model, last)
        self.freeze_bn = freeze_bn
        self.model_name = model_name
        cfg = self.model.pretrained_cfg
        self.mean = tuple(cfg.get("mean", self.mean))
        self.std = tuple(cfg.get("std", self.std))
        info = self.model.feature_info
        self.feature_info = FeatureInfo(
            Level(level_name(s), c, r, f"model.{m}", feature_location)
            for s, c, r, m in zip(levels, info.channels(), info.reduction(), info.module_name())
        )

    @staticmethod
    def _check_published(model_name: str) -> None:
        if not timm.list_models(model_name, pretrained=True):
            others = timm.list_models(f"*{model_name}", pretrained=True)
            names = sorted({f"timm:{n.split('.')[0]}" for n in others})
            hint = f" (it has them for {', '.join(names)})" if others else ""
            raise ValueError(
                f"timm publishes no pretrained weights for {model_name!r}{hint}; use pretrained=false or the "
                "path of a state dict"
            )

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return OrderedDict(zip(self.feature_info.names(), self.model(x)))

