"""Semantic segmentation metrics from a confusion matrix: mIoU, pixel accuracy, per-class IoU."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def confusion_matrix(prediction: torch.Tensor, target: torch.Tensor, num_labels: int, ignore_index: int = 255
                     ) -> torch.Tensor:
    """``(num_labels, num_labels)`` counts, rows the true label, columns the predicted; void pixels ignored."""
    valid = target != ignore_index
    index = target[valid].long() * num_labels + prediction[valid].long()
    return torch.bincount(index, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def segmentation_metrics(confusion: np.ndarray, label_names: Sequence[str]) -> dict:
    """mIoU, pixel accuracy and per-class IoU of a summed confusion matrix.

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
