"""Kestrel backbones: efficient classifiers as multi-scale feature pyramids.

Every backbone returns an ordered dict of named levels and states, per level, its channels and
stride in ``feature_info``. Build one by name with :func:`build_backbone`; register your own with
:func:`register_backbone` or the ``kestrel.backbones`` entry-point group.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from . import efficientnet, mobilenet, nas, once_for_all  # noqa: F401  (registers the built-ins)
from ._features import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FeatureInfo,
    Level,
    Pyramid,
    check_pyramid,
    check_pyramid_output,
    ensure_pyramid,
    level_name,
)
from ._inference import fold_batch_norms, inference_copy
from ._registry import (
    ENTRY_POINT_GROUP,
    Backbone,
    backbone_options,
    build_backbone,
    get_backbone_factory,
    list_backbones,
    register_backbone,
    reload_plugins,
)
from ._timm import TimmBackbone
from ._torchvision import TorchvisionBackbone
from .interop import register_smp_encoders, torchvision_backbone
from .necks import FPN, BackboneWithNeck, SSDLiteExtra

try:
    __version__ = _version("kestrel-vision")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ENTRY_POINT_GROUP",
    "FPN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "BackboneWithNeck",
    "FeatureInfo",
    "Level",
    "Pyramid",
    "SSDLiteExtra",
    "TimmBackbone",
    "TorchvisionBackbone",
    "backbone_options",
    "build_backbone",
    "check_pyramid",
    "check_pyramid_output",
    "ensure_pyramid",
    "fold_batch_norms",
    "get_backbone_factory",
    "inference_copy",
    "level_name",
    "list_backbones",
    "register_backbone",
    "register_smp_encoders",
    "reload_plugins",
    "torchvision_backbone",
]
