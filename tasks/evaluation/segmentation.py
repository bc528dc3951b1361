"""Semantic segmentation scored by the confusion matrix over every pixel: mIoU, pixel accuracy, per-class IoU."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix

from ._base import Evaluator, Report, Sample

VOID = 255  # the label of pixels no class claims (VOC's object borders, COCO's crowd regions)


def segmentation_metrics(confusion: np.ndarray, label_names: Sequence[str]) -> dict:
    """mIoU, pixel accuracy and per-class IoU of a summed confusion matrix (rows true, columns predicted).

    A class absent from both the ground truth and the predictions has no IoU (0 / 0): it is None in
    ``per_class_iou`` and left out of the mean, as in the Pascal VOC and Cityscapes evaluations.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true_positive = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
    total = confusion.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "pixel_accuracy": float(true_positive.sum() / total) if total else None,
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(label_names, iou)},
    }


class SegmentationEvaluator(Evaluator):
    """mIoU of label maps (``labels`` ``(H, W)`` at the image's size) against masks (``mask``, 255 void), from
    torchmetrics' confusion matrix summed over every pixel of the split.

    Args:
        class_names: Names of labels 1..K (0 is background).
        description: Which data, for reports and errors.
        samples: How many images (the first this process sees) the report shows.
    """

    main_metric = "miou"

    def __init__(self, class_names: Sequence[str], description: str = "", samples: int = 4):
        super().__init__(description)
        self.label_names = ["background", *class_names]
        labels = len(self.label_names)
        self.add_state("confusion", torch.zeros(labels, labels, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("images", torch.tensor(0), dist_reduce_fx="sum")
        self.sample_count = samples
        self._samples: list[Sample] = []

    def update(self, outputs: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, Any]]) -> None:
        for out, target in zip(outputs, targets, strict=True):
            labels, mask = out["labels"].detach().to(self.device), target["mask"].to(self.device)
            if labels.shape != mask.shape:
                raise ValueError(f"{target.get('file', target['image_id'])}: the prediction is "
                                 f"{tuple(labels.shape)}, the mask {tuple(mask.shape)}")
            self.confusion += multiclass_confusion_matrix(labels.flatten(), mask.flatten(), len(self.label_names),
                                                          ignore_index=VOID, validate_args=False)
            self.images += 1
            if len(self._samples) < self.sample_count:
                self._samples.append(Sample(target["file"], {"labels": mask.to(torch.uint8).cpu()},
                                            {"labels": labels.to(torch.uint8).cpu()}))

    def compute(self) -> dict[str, Any]:
        """``miou``, ``pixel_accuracy`` and ``per_class_iou`` (name -> IoU), void pixels ignored."""
        confusion = self.confusion.cpu().numpy()
        metrics = segmentation_metrics(confusion, self.label_names)
        self._details = {"metrics": metrics, "confusion": confusion, "images": int(self.images)}
        return metrics

    def report(self) -> Report:
        details = self._computed_details()
        metrics = details["metrics"]
        return Report(
            task="segment", title="Segmentation report", metrics=metrics, headline=["miou", "pixel_accuracy"],
            table={name: {"iou": v} for name, v in metrics["per_class_iou"].items()}, columns=["iou"],
            notes=["IoU = TP / (TP + FP + FN) over every pixel of the split; void pixels (255) are ignored.",
                   "n/a: a class absent from both ground truth and predictions has no IoU and is left out of the "
                   "mean."],
            counts={"images": details["images"]}, data=self.description,
            bars={"per_class_iou": (metrics["per_class_iou"], "IoU per class", "IoU")},
            confusion=details["confusion"], label_names=self.label_names, samples=list(self._samples),
        )

    def reset(self) -> None:
        super().reset()
        self._samples = []
