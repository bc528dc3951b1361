"""COCO detection metrics: faster-coco-eval's COCOeval (equal to pycocotools') on the data set's own ground truth."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

log = logging.getLogger(__name__)

# Indices into COCOeval.stats, pycocotools' summary order.
COCO_DETECTION_KEYS = {
    "map": 0, "map_50": 1, "map_75": 2, "map_small": 3, "map_medium": 4, "map_large": 5,
    "mar_1": 6, "mar_10": 7, "mar_100": 8, "mar_small": 9, "mar_medium": 10, "mar_large": 11,
}


def detections_to_coco(
    image_id: int | str, boxes: np.ndarray, scores: np.ndarray, category_ids: Sequence[int]
) -> list[dict]:
    """COCO results entries (``bbox`` as ``[x, y, width, height]``) for one image's ``x1, y1, x2, y2`` boxes."""
    return [
        {
            "image_id": image_id,
            "category_id": int(c),
            "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
            "score": float(s),
        }
        for (x1, y1, x2, y2), s, c in zip(boxes.tolist(), scores.tolist(), category_ids)
    ]


# COCOeval's area ranges (params.areaRng) by the suffix of a metric's name
_AREAS = {"small": (0, 32**2), "medium": (32**2, 96**2), "large": (96**2, 1e5**2)}


def area_of(key: str) -> tuple[float, float]:
    """The area range a metric's name refers to (``map_small`` -> small; ``map``, ``ap_50`` -> all)."""
    return _AREAS.get(key.rsplit("_", 1)[-1], (0, 1e5**2))


def has_ground_truth(annotations: Sequence[dict], category_ids: set[int], area: tuple[float, float],
                     keypoints: bool = False) -> bool:
    """Whether COCOeval has ground truth to score in these categories and area range: a non-crowd
    annotation (with keypoints, for keypoint evaluation). Where it has none it leaves the number undefined."""
    low, high = area
    return any(a["category_id"] in category_ids and not a.get("iscrowd", 0) and low <= a["area"] <= high
               and (not keypoints or a.get("num_keypoints", 0) > 0) for a in annotations)


def _number(value: float) -> float | None:
    """COCOeval's -1 ("no ground truth of this kind") becomes None rather than a fake number."""
    return None if value < 0 or math.isnan(value) else float(value)


def coco_detection_metrics(
    ground_truth: dict, detections: list[dict], class_names: Sequence[str], return_precision: bool = False
) -> dict | tuple[dict, np.ndarray | None]:
    """COCO bbox metrics of ``detections`` against ``ground_truth`` (a COCO annotation dict).

    Returns the summary numbers (``map``, ``map_50``, ``map_75``, ``map_small/medium/large``,
    ``mar_1/10/100``, ``mar_small/medium/large``) exactly as COCOeval's ``stats``, and ``per_class``:
    name -> ``{"ap", "ap_50"}`` (area all, 100 detections). A number that COCOeval leaves undefined
    (-1: no ground truth of that size or class) is None, also without any detections. With
    ``return_precision`` also COCOeval's
    precision array ``[IoU, recall, class, area, max dets]`` (None without detections).
    """
    gt = COCO()
    gt.dataset = {k: ground_truth[k] for k in ("images", "annotations", "categories")}
    gt.createIndex()
    categories = sorted(c["id"] for c in ground_truth["categories"])
    if not detections:  # COCOeval cannot load none: 0 where there is ground truth to miss, else undefined
        log.warning("no detections to evaluate: every AP with ground truth to find is 0")
        annotations = ground_truth["annotations"]
        metrics = {k: 0.0 if has_ground_truth(annotations, set(categories), area_of(k)) else None
                   for k in COCO_DETECTION_KEYS}
        metrics["per_class"] = {}
        for name, category in zip(class_names, categories):
            value = 0.0 if has_ground_truth(annotations, {category}, area_of("ap")) else None
            metrics["per_class"][name] = {"ap": value, "ap_50": value}
        return (metrics, None) if return_precision else metrics
    dt = gt.loadRes(detections)
    evaluator = COCOeval_faster(gt, dt, "bbox", print_function=log.debug)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    metrics: dict = {k: _number(evaluator.stats[i]) for k, i in COCO_DETECTION_KEYS.items()}
    precision = evaluator.eval["precision"]  # [IoU thresholds, recall points, classes, areas, max dets]
    per_class = {}
    for k, (name, _) in enumerate(zip(class_names, categories)):
        at_all = precision[:, :, k, 0, -1]
        at_50 = precision[0, :, k, 0, -1]
        per_class[name] = {
            "ap": float(at_all[at_all > -1].mean()) if (at_all > -1).any() else None,
            "ap_50": float(at_50[at_50 > -1].mean()) if (at_50 > -1).any() else None,
        }
    metrics["per_class"] = per_class
    return (metrics, precision) if return_precision else metrics
