"""Trained models in application code: ``Detector.from_checkpoint("best.ckpt")(["photo.jpg"])``.

A predictor holds a network (a checkpoint's, rebuilt with no config and no data, or an exported file
run by ONNX Runtime / OpenVINO) and what it was trained on (class or keypoint names). It takes images
as file paths, NumPy arrays ``(H, W, 3)`` RGB (or ``(H, W)`` grey) uint8, or tensors ``(3, H, W)``
(uint8, or floats in [0, 1]) of any sizes, and returns per image, in that image's pixels:

- :class:`Detector`: ``{"boxes" (n, 4) x1 y1 x2 y2, "scores", "labels", "names"}``;
- :class:`Segmenter`: ``{"labels" (H, W)}`` (0 background, k is ``class_names[k - 1]``);
- :class:`PoseEstimator` (given person boxes): ``{"keypoints" (B, K, 3) x y score, "names"}``.

The same images give the same results from a checkpoint and from its exported file (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from backbones import inference_copy

from ..data.images import read_image
from ..data.pose import box_to_center_scale, crop_matrix, cut_out, invert_affine
from ..evaluation.keypoints import apply_affine
from ..from_config import task_class
from .runtime import Network, is_exported, load_exported, run_images

ImageLike = str | Path | np.ndarray | torch.Tensor


def as_image(image: ImageLike) -> torch.Tensor:
    """One image as the networks take it: uint8 RGB ``(3, H, W)``.

    Raises:
        TypeError, ValueError: anything but what the module docstring lists, named: a float image with values
            outside [0, 1] (0-255 floats: convert them with ``.to(torch.uint8)``) or not finite, an integer image
            outside 0-255, an image without pixels. Nothing is clamped or wrapped into range.
    """
    if isinstance(image, (str, Path)):
        return torch.from_numpy(read_image(image)).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise TypeError(f"a NumPy image must be uint8 (H, W, 3) RGB, got {image.dtype}")
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a NumPy image must be (H, W, 3) RGB or (H, W) grey, got shape {image.shape}")
        _check_pixels(image.shape[:2])
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"a tensor image must be (3, H, W), got shape {tuple(image.shape)}")
        _check_pixels(tuple(image.shape[1:]))
        if image.is_floating_point():
            low, high = float(image.min()), float(image.max())
            if not (0 <= low and high <= 1):  # (also false for NaN)
                raise ValueError(f"a float tensor image must hold values in [0, 1], got {low:g} to {high:g}"
                                 + (": for 0-255 values pass image.to(torch.uint8)" if high <= 255 and low >= 0
                                    else ""))
            return (image * 255).round().to(torch.uint8)
        if image.dtype == torch.bool or image.is_complex():
            raise TypeError(f"a tensor image must be uint8 (0-255) or float (0-1), got {image.dtype}")
        if image.dtype != torch.uint8 and (int(image.min()) < 0 or int(image.max()) > 255):
            raise ValueError(f"an integer tensor image must hold values 0-255, got {int(image.min())} to "
                             f"{int(image.max())}")
        return image.to(torch.uint8)
    raise TypeError(f"an image is a path, a NumPy array or a tensor, got {type(image).__name__}")


def _check_pixels(size: tuple[int, ...]) -> None:
    if min(size) < 1:
        raise ValueError(f"an image must have pixels, got {size[0]}x{size[1]}")


def as_images(images: ImageLike | Sequence[ImageLike]) -> tuple[list[torch.Tensor], bool]:
    """One image or a list of them as uint8 ``(3, H, W)`` tensors, and whether it was one."""
    single = not isinstance(images, (list, tuple))
    return [as_image(i) for i in ([images] if single else images)], single


class Predictor:
    """A network and what it predicts; see the module docstring. Build one with :meth:`from_checkpoint`.

    Args:
        network: The task's network (eval mode) or an exported model (``tasks.deploy.runtime.load_exported``).
        metadata: The task's metadata (``Task.metadata()`` or the exported file's).
        device: Where a PyTorch network runs.
    """

    task: ClassVar[str]

    def __init__(self, network: Network, metadata: dict[str, Any], device: str | torch.device = "cpu"):
        if metadata.get("task") != self.task:
            raise ValueError(f"{type(self).__name__} runs {self.task!r} models, this one is {metadata.get('task')!r}")
        self.network = network
        self.metadata = metadata
        self.device = torch.device(device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None):
        """From a Kestrel checkpoint (``best.ckpt``: no config or data needed) or an exported file
        (``.onnx``, OpenVINO ``.xml``; run on the CPU with ``threads`` threads)."""
        if is_exported(path):
            exported = load_exported(path, cls.task, threads)
            return cls(exported, exported.metadata)
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
        task = task_class(cls.task).load_from_checkpoint(path, map_location=device)
        return cls(inference_copy(task.model.to(device)), task.metadata(), device)  # batch norms folded

    def run(self, images: list[torch.Tensor], batch_size: int = 16) -> list[dict[str, torch.Tensor]]:
        with torch.inference_mode():
            return [{k: v.cpu() for k, v in out.items()}
                    for out in run_images(self.network, [image.to(self.device) for image in images], batch_size)]


class Detector(Predictor):
    """Boxes, scores, labels and class names per image, in the image's pixels.

    Args (of a call):
        images: One image or a list (see the module docstring).
        score_threshold: Detections scoring below are left out.
    """

    task = "detect"

    @property
    def class_names(self) -> list[str]:
        return self.metadata["class_names"]

    def __call__(self, images: ImageLike | Sequence[ImageLike], score_threshold: float = 0.0) -> list[dict[str, Any]]:
        results = []
        for out in self.run(as_images(images)[0]):
            keep = out["scores"] >= score_threshold
            out = {k: v[keep] for k, v in out.items()}
            out["names"] = [self.class_names[label - 1] for label in out["labels"].tolist()]
            results.append(out)
        return results


class Segmenter(Predictor):
    """A label map per image at its own size: 0 background, ``k`` the class ``class_names[k - 1]``."""

    task = "segment"

    @property
    def class_names(self) -> list[str]:
        return self.metadata["class_names"]

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> list[dict[str, torch.Tensor]]:
        return self.run(as_images(images)[0])


def _boxes(boxes: Any, index: int) -> np.ndarray:
    """An image's person boxes as ``(B, 4)`` float64 ``x1, y1, x2, y2``: finite, each with ``x1 < x2``,
    ``y1 < y2``; else a ``ValueError`` naming the box."""
    try:
        array = np.asarray(boxes.cpu() if isinstance(boxes, torch.Tensor) else boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"the person boxes of image {index} must be numbers (B, 4) as x1, y1, x2, y2") from None
    if array.size % 4 or (array.ndim > 1 and array.shape[-1] != 4):
        raise ValueError(f"the person boxes of image {index} must be (B, 4) as x1, y1, x2, y2, got shape "
                         f"{array.shape}")
    array = array.reshape(-1, 4)
    for box in array:
        if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
            raise ValueError(f"person box {box.tolist()} of image {index} is not a box x1, y1, x2, y2 with "
                             "x1 < x2 and y1 < y2")
    return array


class PoseEstimator(Predictor):
    """Keypoints of the people in given boxes, in image pixels, with their names.

    Args (of a call):
        images: One image or a list (see the module docstring).
        boxes: Per image, person boxes ``(B, 4)`` as ``x1, y1, x2, y2`` (a detector's output); None:
            each whole image is one person box.
    """

    task = "pose"

    @property
    def keypoint_names(self) -> list[str]:
        return self.metadata["keypoint_names"]

    def __call__(self, images: ImageLike | Sequence[ImageLike],
                 boxes: Sequence[np.ndarray | torch.Tensor | Sequence[Sequence[float]]] | None = None
                 ) -> list[dict[str, Any]]:
        images, single = as_images(images)
        if boxes is None:
            boxes = [[[0, 0, image.shape[2], image.shape[1]]] for image in images]
        elif single:
            boxes = [boxes]
        if len(boxes) != len(images):
            raise ValueError(f"{len(boxes)} lists of boxes for {len(images)} images: give one (B, 4) per image")
        height, width = self.metadata["input_size"]
        crops, matrices, owner = [], [], []
        for index, (image, image_boxes) in enumerate(zip(images, boxes)):
            array = image.permute(1, 2, 0).numpy()
            for box in _boxes(image_boxes, index):
                x1, x2 = box[[0, 2]].clip(0, image.shape[2])  # as the data's boxes are clipped to their image
                y1, y2 = box[[1, 3]].clip(0, image.shape[1])
                if x2 <= x1 or y2 <= y1:
                    raise ValueError(f"person box {box.tolist()} of image {index} has no area inside the image "
                                     f"({image.shape[2]}x{image.shape[1]})")
                center, scale = box_to_center_scale(np.array([x1, y1, x2 - x1, y2 - y1]), width / height)
                matrix = crop_matrix(center, scale, (height, width))
                crop = np.ascontiguousarray(cut_out(array, matrix, (height, width)))
                crops.append(torch.from_numpy(crop).permute(2, 0, 1))
                matrices.append(invert_affine(matrix))
                owner.append(index)
        keypoints = [out["keypoints"].numpy() for out in self.run(crops)] if crops else []
        results = [{"keypoints": torch.zeros(0, len(self.keypoint_names), 3), "names": self.keypoint_names}
                   for _ in images]
        for index in range(len(images)):
            mine = [np.concatenate([apply_affine(matrices[i], keypoints[i][:, :2]), keypoints[i][:, 2:]], 1)
                    for i, o in enumerate(owner) if o == index]
            if mine:
                results[index]["keypoints"] = torch.from_numpy(np.stack(mine)).float()
        return results
