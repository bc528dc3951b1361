"""What ``predict`` writes, as Lightning prediction writers: one ``BasePredictionWriter`` per task.

Into ``<run>/predictions/`` (or ``output_dir``): detection ``detections.json`` (COCO results with the data set's
own image and category ids), segmentation one palette PNG of class indices per image, pose ``keypoints.json``
(COCO keypoint results); and with ``draw`` each image with its predictions drawn into ``images/`` (boxes with
class names and scores, label overlays with a legend, skeletons). In a distributed run every process writes
its images and the results files hold every process's predictions.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from PIL import Image
from pytorch_lightning.callbacks import BasePredictionWriter

from ..data.images import read_image
from ..data.voc import VOC_PALETTE
from ..evaluation.coco import detections_to_coco
from ..evaluation.keypoints import apply_affine, pose_results
from .drawing import DRAW_SCORE, draw_detections, draw_labels, draw_poses, save_image


def gather(items: list[Any]) -> list[Any]:
    """Every process's ``items``, concatenated in rank order (this process's own outside a distributed run)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(items)
    parts: list[list[Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [item for part in parts for item in part or []]


class PredictionWriter(BasePredictionWriter):
    """Base of the task writers: the output folder, the drawn images and the line ``predict`` prints.

    Args:
        output_dir: Where to write; the run's ``predictions/`` folder if None.
        draw: Also write each image with its predictions drawn into ``images/`` (``predict --draw false``: off).
    """

    def __init__(self, output_dir: str | None = None, draw: bool = True):
        super().__init__("batch")
        self.output_dir = output_dir
        self.draw = draw
        self.folder = Path(output_dir) if output_dir else None
        self._found: list[Any] = []

    @property
    def drawing(self) -> Path | None:
        """Where the drawn images go (None without ``draw``)."""
        return self.folder / "images" if self.draw and self.folder is not None else None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective in a distributed run: every process asks
        self.folder = Path(self.output_dir) if self.output_dir else Path(log_dir or trainer.default_root_dir) / \
            "predictions"
        for folder in (self.folder, self.drawing):
            if folder is not None:
                folder.mkdir(parents=True, exist_ok=True)
        self._found = []

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        found = gather(self._found)
        if trainer.is_global_zero:
            print(f"Predictions: {self.finish(pl_module, found)}" + self.drawing_note())

    def finish(self, pl_module: pl.LightningModule, found: list[Any]) -> str:
        """Write the results file of every process's ``found``; what was written, for the printed line."""
        raise NotImplementedError

    def drawing_note(self) -> str:
        if self.drawing is None:
            return ""
        count = sum(1 for f in self.drawing.iterdir() if f.is_file())
        return f"; drawn on each image: {self.drawing} ({count} files)"


class DetectionWriter(PredictionWriter):
    """``detections.json``: COCO results (``bbox`` x, y, width, height in the image's pixels, the data set's ids)."""

    def write_on_batch_end(self, trainer, pl_module, prediction: Sequence[dict[str, torch.Tensor]], batch_indices,
                           batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, targets = batch
        for image, out, target in zip(images, prediction, targets):
            boxes, scores, labels = (out[k].detach().cpu().numpy() for k in ("boxes", "scores", "labels"))
            ids = [pl_module.category_ids[label - 1] for label in labels.tolist()]
            self._found.append(detections_to_coco(target["image_id"], boxes, scores, ids))
            if self.drawing is not None:
                save_image(draw_detections(image.cpu(), boxes, scores, labels, pl_module.class_names),
                           self.drawing / Path(target["file"]).name)

    def finish(self, pl_module, found: list[list[dict]]) -> str:
        entries = [entry for image in found for entry in image]
        path = self.folder / "detections.json"
        path.write_text(json.dumps(entries))
        return f"{path} ({len(entries)} detections on {len(found)} images)"


class SegmentationWriter(PredictionWriter):
    """``<image stem>.png`` per image: a palette PNG of class indices (0 background) at the image's size, written
    as each batch is predicted (a data set's full-resolution label maps are not kept in memory)."""

    def write_on_batch_end(self, trainer, pl_module, prediction: Sequence[dict[str, torch.Tensor]], batch_indices,
                           batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, targets = batch
        names = ["background", *pl_module.class_names]
        for image, out, target in zip(images, prediction, targets):
            labels = out["labels"].to(torch.uint8).cpu()
            file = Path(target["file"])
            png = Image.fromarray(labels.numpy(), mode="P")
            png.putpalette(VOC_PALETTE)
            png.save(self.folder / f"{file.stem}.png")
            self._found.append(file.stem)
            if self.drawing is not None:
                save_image(draw_labels(image.cpu(), labels, names), self.drawing / file.name)

    def finish(self, pl_module, found: list[str]) -> str:
        return f"{self.folder} ({len(found)} palette PNGs of class indices)"


class PoseWriter(PredictionWriter):
    """``keypoints.json``: COCO keypoint results (x, y in image pixels and a score per keypoint), each pose
    rescored and the poses of an image OKS-NMS'd as the evaluation does."""

    def write_on_batch_end(self, trainer, pl_module, prediction: Sequence[dict[str, torch.Tensor]], batch_indices,
                           batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        for out, target in zip(prediction, batch[1]):
            keypoints = out["keypoints"].detach().cpu().numpy()
            self._found.append({
                "instance": int(target["instance"]), "image_id": target["image_id"], "file": str(target["file"]),
                "category_id": target["category_id"], "box_score": float(target["box_score"]),
                "box_area": float(target["box_area"]),
                "points": apply_affine(np.asarray(target["matrix"]), keypoints[:, :2]), "scores": keypoints[:, 2],
            })

    def finish(self, pl_module, found: list[dict]) -> str:
        found = sorted(found, key=lambda f: f["instance"])
        category = found[0]["category_id"] if found else None
        entries = pose_results([f["image_id"] for f in found], np.array([f["points"] for f in found]),
                               np.array([f["scores"] for f in found]), [f["box_score"] for f in found],
                               [f["box_area"] for f in found], category, pl_module.sigmas,
                               pl_module.keypoint_score_threshold, pl_module.nms_threshold)
        path = self.folder / "keypoints.json"
        path.write_text(json.dumps(entries))
        files = {f["image_id"]: f["file"] for f in found}
        if self.drawing is not None:  # every image with a person box, the poses scoring at least DRAW_SCORE drawn
            edges = [(a - 1, b - 1) for a, b in pl_module.skeleton or []]
            shown = defaultdict(list)
            for entry in entries:
                if entry["score"] >= DRAW_SCORE:
                    shown[entry["image_id"]].append(np.reshape(entry["keypoints"], (-1, 3)))
            for image_id, file in files.items():
                poses = shown[image_id]
                image = torch.from_numpy(read_image(file)).permute(2, 0, 1)
                if poses:
                    image = draw_poses(image, np.stack(poses)[..., :2],
                                       np.stack(poses)[..., 2] > pl_module.keypoint_score_threshold, edges)
                save_image(image, self.drawing / Path(file).name)
        return f"{path} ({len(entries)} poses on {len(files)} images)"
