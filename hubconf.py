"""torch.hub entry points: ``torch.hub.load("path/to/kestrel", "ssdlite_mbv3", source="local")``.

Each model is the network of the config of the same name (``configs/<name>.yaml``), without ImageNet
weights unless ``pretrained_backbone=True`` (then from torchvision's / timm's cache, or the network);
``weights=`` loads a Kestrel checkpoint or state dict of the whole network.
"""

# what the entry points import (torch.hub checks each is importable before loading this file)
dependencies = ["torch", "torchvision", "timm", "segmentation_models_pytorch", "pytorch_lightning", "torchmetrics",
                "jsonargparse", "yaml", "numpy", "cv2", "PIL", "matplotlib", "tqdm", "albumentations", "pycocotools",
                "faster_coco_eval"]

from backbones import build_backbone as backbone  # noqa: E402, F401  (a bare pyramid by name)
from backbones.interop import torchvision_backbone  # noqa: E402, F401
from tasks.data.pose import COCO_KEYPOINTS  # noqa: E402
from tasks.from_config import model_from_config  # noqa: E402


def ssdlite_mbv3(num_classes: int = 80, image_size: int = 320, **kwargs):
    """SSDLite320 on MobileNetV3-Large (``configs/ssdlite_mbv3.yaml``, torchvision's layout)."""
    return model_from_config("ssdlite_mbv3", num_classes=num_classes, image_size=image_size, **kwargs)


def ssdlite_mbv2(num_classes: int = 80, image_size: int = 320, **kwargs):
    """SSDLite on MobileNetV2 (``configs/ssdlite_mbv2.yaml``)."""
    return model_from_config("ssdlite_mbv2", num_classes=num_classes, image_size=image_size, **kwargs)


def ssdlite_mbv1(num_classes: int = 80, image_size: int = 320, **kwargs):
    """SSDLite on MobileNetV1 (``configs/ssdlite_mbv1.yaml``), the MobileNet-SSD pairing."""
    return model_from_config("ssdlite_mbv1", num_classes=num_classes, image_size=image_size, **kwargs)


def ssdlite_mbv4s(num_classes: int = 80, image_size: int = 320, **kwargs):
    """SSDLite on MobileNetV4-conv-small (``configs/ssdlite_mbv4s.yaml``)."""
    return model_from_config("ssdlite_mbv4s", num_classes=num_classes, image_size=image_size, **kwargs)


def ssdlite_effb0(num_classes: int = 80, image_size: int = 320, **kwargs):
    """SSDLite on EfficientNet-B0 (``configs/ssdlite_effb0.yaml``)."""
    return model_from_config("ssdlite_effb0", num_classes=num_classes, image_size=image_size, **kwargs)


def deeplabv3plus_mbv2(num_classes: int = 20, image_size: int = 513, **kwargs):
    """DeepLabV3+ on MobileNetV2, output stride 16 (``configs/deeplabv3plus_mbv2_voc.yaml``)."""
    return model_from_config("deeplabv3plus_mbv2_voc", num_classes=num_classes, image_size=image_size, **kwargs)


def deeplabv3plus_mbv3(num_classes: int = 20, image_size: int = 513, **kwargs):
    """DeepLabV3+ on MobileNetV3-Large (``configs/deeplabv3plus_mbv3_voc.yaml``)."""
    return model_from_config("deeplabv3plus_mbv3_voc", num_classes=num_classes, image_size=image_size, **kwargs)


def deeplabv3plus_effb0(num_classes: int = 20, image_size: int = 513, **kwargs):
    """DeepLabV3+ on EfficientNet-B0 (``configs/deeplabv3plus_effb0_voc.yaml``)."""
    return model_from_config("deeplabv3plus_effb0_voc", num_classes=num_classes, image_size=image_size, **kwargs)


def pose_mbv2(keypoint_names=COCO_KEYPOINTS, **kwargs):
    """SimpleBaseline heatmaps on MobileNetV2, 256x192 (``configs/pose_mbv2_coco.yaml``)."""
    return model_from_config("pose_mbv2_coco", keypoint_names=list(keypoint_names), **kwargs)


def pose_mbv3(keypoint_names=COCO_KEYPOINTS, **kwargs):
    """SimpleBaseline heatmaps on MobileNetV3-Large (``configs/pose_mbv3_coco.yaml``)."""
    return model_from_config("pose_mbv3_coco", keypoint_names=list(keypoint_names), **kwargs)


def pose_effb0(keypoint_names=COCO_KEYPOINTS, **kwargs):
    """SimpleBaseline heatmaps on EfficientNet-B0 (``configs/pose_effb0_coco.yaml``)."""
    return model_from_config("pose_effb0_coco", keypoint_names=list(keypoint_names), **kwargs)
