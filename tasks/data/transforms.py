"""Augmentation presets (albumentations), boxes carried through every step.

The SSD-specific geometric steps that albumentations lacks, the IoU crop and the zoom-out, are
albumentations transforms whose random parameters come from torchvision's own ``RandomIoUCrop`` and
``RandomZoomOut`` (the reference recipe's code); albumentations crops, pads and moves the boxes.
"""

from __future__ import annotations

from typing import Any, Literal

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.augmentations.crops.transforms import BaseCrop
from torchvision import tv_tensors
from torchvision.transforms import v2

DetectionPreset = Literal["ssdlite", "ssd", "none"]

# torchvision's SSD recipe fills zoomed-out canvases with the ImageNet mean (0-255).
MEAN_FILL = (123.0, 117.0, 104.0)


def _boxes_meta(shape: tuple[int, ...], bboxes: np.ndarray) -> tv_tensors.BoundingBoxes:
    """Pixel boxes for torchvision's samplers, from albumentations' normalized ones."""
    h, w = shape[:2]
    xyxy = torch.as_tensor(np.asarray(bboxes, dtype=np.float32)[:, :4].reshape(-1, 4)) * torch.tensor([w, h, w, h])
    return tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(h, w))


class IoUCrop(BaseCrop):
    """SSD's random crop (Liu et al. 2016): a crop whose IoU with every box exceeds a sampled minimum.

    Crop sampling is torchvision's ``RandomIoUCrop``; boxes whose centre leaves the crop are dropped,
    as in torchvision's recipe, and the rest are clipped to it.
    """

    def __init__(self, min_scale: float = 0.3, max_scale: float = 1.0, p: float = 1.0):
        super().__init__(p=p)
        self.sampler = v2.RandomIoUCrop(min_scale=min_scale, max_scale=max_scale)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        crop = self.sampler.make_params([_boxes_meta(params["shape"], data.get("bboxes", np.zeros((0, 4))))])
        if not crop:  # torchvision's "leave as is" option
            return {"crop_coords": (0, 0, w, h)}
        return {"crop_coords": (crop["left"], crop["top"], crop["left"] + crop["width"], crop["top"] + crop["height"])}

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        h, w = params["shape"][:2]
        x_min, y_min, x_max, y_max = crop_coords
        cx = (bboxes[:, 0] + bboxes[:, 2]) * (w / 2)
        cy = (bboxes[:, 1] + bboxes[:, 3]) * (h / 2)
        inside = (x_min < cx) & (cx < x_max) & (y_min < cy) & (cy < y_max)
        return super().apply_to_bboxes(bboxes[inside], crop_coords, **params)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


class ZoomOut(A.Pad):
    """SSD's zoom-out: the image placed at a random spot of a canvas 1-4 times its size.

    Canvas size and position are torchvision's ``RandomZoomOut`` sampling; albumentations pads.
    """

    def __init__(self, side_range: tuple[float, float] = (1.0, 4.0), fill: Any = MEAN_FILL, p: float = 0.5):
        super().__init__(padding=0, fill=fill, fill_mask=255, border_mode=cv2.BORDER_CONSTANT, p=p)
        self.sampler = v2.RandomZoomOut(side_range=side_range)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        left, top, right, bottom = self.sampler.make_params([_boxes_meta(params["shape"], np.zeros((0, 4)))])[
            "padding"
        ]
        return {"pad_top": top, "pad_bottom": bottom, "pad_left": left, "pad_right": right}


def detection_transform(preset: DetectionPreset, image_size: int) -> A.Compose:
    """The training augmentation of a preset, then a resize to ``image_size`` x ``image_size``.

    Evaluation has no transform: the detector takes images of any size and resizes them itself.

    Args:
        preset: ``"ssdlite"`` (IoU crop and horizontal flip, torchvision's SSDLite recipe),
            ``"ssd"`` (adds photometric distortion and zoom-out first, torchvision's SSD recipe) or
            ``"none"``.
        image_size: Side of the square output.

    Boxes are ``pascal_voc`` (pixel ``x1, y1, x2, y2``) with a ``labels`` field; boxes that end up
    thinner than a pixel are dropped.
    """
    if preset not in ("ssdlite", "ssd", "none"):
        raise ValueError(f"unknown augmentation preset {preset!r}; use 'ssdlite', 'ssd' or 'none'")
    steps: list[A.BasicTransform] = []
    if preset == "ssd":
        steps += [A.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05, p=0.5), ZoomOut()]
    if preset in ("ssdlite", "ssd"):
        steps += [IoUCrop(), A.HorizontalFlip(p=0.5)]
    steps.append(A.Resize(image_size, image_size))
    return A.Compose(
        steps,
        bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True, min_width=1, min_height=1),
    )
