"""Detection scored as COCO (faster-coco-eval, equal to pycocotools) and, on VOC data, VOC07 / VOC12 AP@0.5."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ._base import Evaluator, Report, Sample, cat, image_position, unique_positions
from .coco import coco_detection_metrics, detections_to_coco
from .voc import voc_detection_metrics

HEADLINE = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"]


class DetectionImage(Protocol):
    """What the evaluator needs of one image of the split (``tasks.data.detection.DetectionRecord``)."""

    file: Path
    image_id: int | str  # the data set's own id, as targets name the image
    eval_id: int  # its id in the COCO-format ground truth
    boxes: np.ndarray  # (N, 4) x1 y1 x2 y2 drawn as the ground truth of samples
    labels: np.ndarray


class DetectionEvaluator(Evaluator):
    """COCO box AP of detections (``boxes`` x1 y1 x2 y2 in image pixels, ``scores``, ``labels`` 1..K).

    Args:
        images: The split's images, in the order the ground truth lists them.
        ground_truth: The COCO-format ground truth (the annotation file's content; VOC converted, with
            difficult objects as crowd regions).
        class_names: Names of labels 1..K.
        category_ids: The ground truth's category id of labels 1..K.
        voc_ground_truth: VOC data only: per ``eval_id``, ``(boxes, labels, difficult)``.
        description: Which data, for reports and errors.
    """

    main_metric = "map"

    def __init__(self, images: Sequence[DetectionImage], ground_truth: dict, class_names: Sequence[str],
                 category_ids: Sequence[int], voc_ground_truth: dict | None = None, description: str = ""):
        super().__init__(description)
        self.images = list(images)
        self.ground_truth = ground_truth
        self.class_names = list(class_names)
        self.category_ids = list(category_ids)
        self.voc_ground_truth = voc_ground_truth
        self._position = {image.image_id: i for i, image in enumerate(self.images)}
        for name in ("positions", "owners", "scores", "labels"):
            self.add_state(name, [], dist_reduce_fx="cat")
        self.add_state("boxes", [], dist_reduce_fx="cat")

    def update(self, outputs: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, Any]]) -> None:
        for out, target in zip(outputs, targets, strict=True):
            position = image_position(self._position, target["image_id"], self.description)
            self.positions.append(torch.tensor([position], device=self.device))
            self.owners.append(torch.full((len(out["boxes"]),), position, device=self.device))
            self.boxes.append(out["boxes"].detach().to(self.device, torch.float32).reshape(-1, 4))
            self.scores.append(out["scores"].detach().to(self.device, torch.float32))
            self.labels.append(out["labels"].detach().to(self.device, torch.long))

    def detections(self) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per evaluated image (its position), ``(boxes, scores, labels)`` as NumPy arrays, in the network's order."""
        owners = cat(self.owners, torch.zeros(0, dtype=torch.long)).cpu()
        order = torch.sort(owners, stable=True).indices  # processes' parts in image order, each image's own order
        owners = owners[order].numpy()
        boxes = cat(self.boxes, torch.zeros(0, 4)).cpu()[order].numpy()
        scores = cat(self.scores, torch.zeros(0)).cpu()[order].numpy()
        labels = cat(self.labels, torch.zeros(0, dtype=torch.long)).cpu()[order].numpy()
        found = {p: (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
                 for p in unique_positions(self.positions, self.description)}
        starts = np.searchsorted(owners, sorted(found))
        ends = np.searchsorted(owners, sorted(found), side="right")
        for position, start, end in zip(sorted(found), starts, ends):
            found[position] = (boxes[start:end], scores[start:end], labels[start:end])
        return found

    def compute(self) -> dict[str, Any]:
        """COCO's numbers (``map``, ``map_50``, ..., ``per_class``) and, on VOC data, ``voc07_map_50`` and
        ``voc12_map_50``; None where the split has no ground truth of that kind."""
        found = self.detections()
        entries = []
        for position, (boxes, scores, labels) in sorted(found.items()):
            ids = [self.category_ids[label - 1] for label in labels.tolist()]
            entries += detections_to_coco(self.images[position].eval_id, boxes, scores, ids)
        metrics, precision = coco_detection_metrics(self.ground_truth, entries, self.class_names, return_precision=True)
        if metrics["map"] is None:
            raise ValueError(f"{self.description} has no ground-truth objects to evaluate against")
        if self.voc_ground_truth is not None:
            by_eval_id = {self.images[p].eval_id: result for p, result in found.items()}
            voc = voc_detection_metrics(self.voc_ground_truth, by_eval_id, self.class_names)
            metrics["voc07_map_50"], metrics["voc12_map_50"] = voc["voc07_map_50"], voc["voc12_map_50"]
            for name, values in voc["per_class"].items():
                metrics["per_class"][name].update(values)
        self._details = {"metrics": metrics, "precision": precision, "found": found}
        return metrics

    def report(self) -> Report:
        details = self._computed_details()
        metrics, found = details["metrics"], details["found"]
        voc = self.voc_ground_truth is not None
        notes = [
            "COCO numbers are COCOeval's (faster-coco-eval, equal to pycocotools) on the data set's own "
            "ground truth, with predictions mapped back to original image coordinates and ids.",
            "n/a: no ground truth of that size or class in this split (COCOeval's -1).",
        ]
        if voc:
            notes.append("VOC07 (11-point) and VOC12 (area) AP at IoU 0.5 ignore difficult objects; in the COCO "
                         "numbers difficult objects are crowd regions.")
        samples = [Sample(self.images[p].file, {"boxes": self.images[p].boxes, "labels": self.images[p].labels},
                          dict(zip(("boxes", "scores", "labels"), found[p]))) for p in sorted(found)[:4]]
        return Report(
            task="detect", title="Detection report", metrics=metrics,
            headline=HEADLINE + (["voc07_map_50", "voc12_map_50"] if voc else []),
            table=metrics["per_class"], columns=["ap", "ap_50"] + (["voc07_ap_50", "voc12_ap_50"] if voc else []),
            notes=notes, counts={"images": len(self.images), "objects": sum(len(i.boxes) for i in self.images)},
            data=self.description,
            bars={"per_class_ap": ({n: v["ap"] for n, v in metrics["per_class"].items()}, "AP@[.5:.95] per class",
                                   "AP")},
            precision=details["precision"], label_names=self.class_names, samples=samples,
        )
