"""Pascal VOC detection AP at IoU 0.5: the VOC2007 11-point and the VOC2010+ area definitions.

As the VOC devkit: detections are taken by decreasing score; one matching a ``difficult`` object is
neither a true nor a false positive, and difficult objects do not count as positives. Boxes are
continuous pixel coordinates (see ``tasks.data.voc``), where plain IoU equals the devkit's "+1" IoU
on its 1-based inclusive boxes; a match needs IoU >= 0.5, as the MATLAB devkit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Average precision of one class from its cumulative recall and precision.

    VOC2007: mean of the best precision at recall >= 0, 0.1, ..., 1. VOC2010+: area under the
    precision envelope (precision made monotone from the right).
    """
    if use_07_metric:
        return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                              for t in np.linspace(0, 1, 11)]))
    r = np.concatenate(([0.0], recall, [1.0]))
    p = np.concatenate(([0.0], precision, [0.0]))
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def voc_detection_metrics(
    ground_truth: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    detections: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
) -> dict:
    """VOC07 and VOC12 mAP@0.5 and per-class APs.

    Args:
        ground_truth: Per image, ``(boxes (N, 4), labels (N,), difficult (N,))``; labels 1-based.
        detections: Per image, ``(boxes (M, 4), scores (M,), labels (M,))``.
        class_names: Names of labels 1..K.
        iou_threshold: IoU for a detection to match.

    Returns:
        ``voc07_map_50``, ``voc12_map_50`` (means over classes with at least one non-difficult
        object) and ``per_class``: name -> ``{"voc07_ap_50", "voc12_ap_50"}`` (None without objects).
    """
    per_class = {}
    for label, name in enumerate(class_names, start=1):
        gt = {i: (b[lab == label], d[lab == label]) for i, (b, lab, d) in ground_truth.items()}
        positives = sum(int((~d).sum()) for _, d in gt.values())
        entries = [
            (float(s), i, box)
            for i, (boxes, scores, labels) in detections.items()
            for box, s in zip(boxes[labels == label], scores[labels == label])
        ]
        entries.sort(key=lambda e: -e[0])
        taken = {i: np.zeros(len(b), dtype=bool) for i, (b, _) in gt.items()}
        tp, fp = [], []
        for _, image, box in entries:
            boxes, difficult = gt.get(image, (np.zeros((0, 4)), np.zeros(0, dtype=bool)))
            if len(boxes):
                ious = box_iou(torch.as_tensor(box[None], dtype=torch.float64),
                               torch.as_tensor(boxes, dtype=torch.float64))[0].numpy()
                best = int(ious.argmax())
                if ious[best] >= iou_threshold:
                    if difficult[best]:
                        continue
                    if not taken[image][best]:
                        taken[image][best] = True
                        tp.append(1), fp.append(0)
                        continue
            tp.append(0), fp.append(1)
        if positives == 0:
            per_class[name] = {"voc07_ap_50": None, "voc12_ap_50": None}
            continue
        tp_sum, fp_sum = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
        recall = tp_sum / positives
        precision = tp_sum / np.maximum(tp_sum + fp_sum, np.finfo(float).eps)
        per_class[name] = {
            "voc07_ap_50": voc_ap(recall, precision, use_07_metric=True),
            "voc12_ap_50": voc_ap(recall, precision, use_07_metric=False),
        }
    defined = [v for v in per_class.values() if v["voc07_ap_50"] is not None]
    return {
        "voc07_map_50": float(np.mean([v["voc07_ap_50"] for v in defined])) if defined else None,
        "voc12_map_50": float(np.mean([v["voc12_ap_50"] for v in defined])) if defined else None,
        "per_class": per_class,
    }
