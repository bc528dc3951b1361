"""COCO keypoint metrics: OKS AP by faster-coco-eval's COCOeval (equal to pycocotools'); poses of an image rescored
and OKS-NMS'd into COCO keypoint results, as mmpose does."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Hashable, Sequence

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from .coco import _number, area_of, has_ground_truth

log = logging.getLogger(__name__)

# Indices into COCOeval.stats for iouType "keypoints", pycocotools' summary order.
COCO_KEYPOINT_KEYS = {
    "ap": 0, "ap_50": 1, "ap_75": 2, "ap_medium": 3, "ap_large": 4,
    "ar": 5, "ar_50": 6, "ar_75": 7, "ar_medium": 8, "ar_large": 9,
}


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``(..., 2)`` points through a 2x3 affine map (a crop's back to its image)."""
    return points @ matrix[:, :2].T + matrix[:, 2]


def oks_matrix(keypoints: np.ndarray, areas: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Object keypoint similarity between every two of ``N`` poses ``(N, K, 2+)`` with ``areas`` (N,).

    As COCOeval's OKS with every keypoint counted and the mean of the two poses' areas as the scale.
    """
    xy = np.asarray(keypoints, np.float64)[..., :2]
    variances = (2 * np.asarray(sigmas, np.float64)) ** 2
    squared = ((xy[:, None] - xy[None]) ** 2).sum(-1)  # (N, N, K)
    scale = (areas[:, None] + areas[None]) / 2 + np.spacing(1)
    return np.exp(-squared / variances / scale[..., None] / 2).mean(-1)


def keypoint_accuracy(predicted: np.ndarray, truth: np.ndarray, areas: np.ndarray, sigmas: Sequence[float],
                      threshold: float = 0.5) -> list[float | None]:
    """Per keypoint, the fraction of labelled ground-truth keypoints whose similarity term of OKS,
    ``exp(-d^2 / (2 * area * (2 * sigma)^2))``, is at least ``threshold``; None where none is labelled.

    Args:
        predicted: ``(N, K, 2+)`` keypoints, each matched to the ground truth of the same row.
        truth: ``(N, K, 3)`` ground truth ``x, y, visibility``.
        areas: ``(N,)`` the ground-truth areas (COCO's ``area``).
        sigmas: ``(K,)`` OKS sigmas.
    """
    predicted, truth = np.asarray(predicted, np.float64), np.asarray(truth, np.float64)
    squared = ((predicted[..., :2] - truth[..., :2]) ** 2).sum(-1)
    variances = (2 * np.asarray(sigmas, np.float64)) ** 2
    similarity = np.exp(-squared / variances / (np.asarray(areas, np.float64)[:, None] + np.spacing(1)) / 2)
    labelled = truth[..., 2] > 0
    hits = ((similarity >= threshold) & labelled).sum(0)
    counts = labelled.sum(0)
    return [float(h / c) if c else None for h, c in zip(hits, counts)]


def oks_nms(keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: Sequence[float],
            threshold: float = 0.9) -> list[int]:
    """Greedy non-maximum suppression of poses: keep the best-scoring, drop those whose OKS with it
    exceeds ``threshold``, repeat. Returns the kept indices, best first."""
    if len(scores) == 0:
        return []
    oks = oks_matrix(keypoints, np.asarray(areas, np.float64), sigmas)
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    keep = []
    while order:
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = [i for i in order if oks[best, i] <= threshold]
    return keep


def coco_keypoint_metrics(ground_truth: dict, results: list[dict], sigmas: Sequence[float],
                          category_id: int) -> dict:
    """COCO OKS metrics of keypoint ``results`` (COCO results format) against ``ground_truth``.

    Returns ``ap``, ``ap_50``, ``ap_75``, ``ap_medium``, ``ap_large``, ``ar``, ``ar_50``, ``ar_75``,
    ``ar_medium``, ``ar_large`` exactly as COCOeval's ``stats`` with these ``sigmas``; None where
    COCOeval leaves a number undefined (no ground truth of that size), also without any results.
    """
    gt = COCO()
    gt.dataset = {k: ground_truth[k] for k in ("images", "annotations", "categories")}
    gt.createIndex()
    if not results:  # COCOeval cannot load none: 0 where there is ground truth to miss, else undefined
        log.warning("no keypoint results to evaluate: every AP with ground truth to find is 0")
        annotations = ground_truth["annotations"]
        return {k: 0.0 if has_ground_truth(annotations, {category_id}, area_of(k), keypoints=True) else None
                for k in COCO_KEYPOINT_KEYS}
    dt = gt.loadRes(results)
    evaluator = COCOeval_faster(gt, dt, "keypoints", print_function=log.debug, kpt_oks_sigmas=list(sigmas))
    evaluator.params.catIds = [category_id]
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {k: _number(evaluator.stats[i]) for k, i in COCO_KEYPOINT_KEYS.items()}


def pose_results(image_ids: Sequence[Hashable], points: np.ndarray, scores: np.ndarray, box_scores: Sequence[float],
                 box_areas: Sequence[float], category_id: int, sigmas: Sequence[float],
                 keypoint_score_threshold: float, nms_threshold: float | None) -> list[dict]:
    """COCO keypoint results of top-down poses: each rescored (box score x the mean of its keypoint scores above
    ``keypoint_score_threshold``), then the poses of each image OKS-NMS'd at ``nms_threshold`` (None: no NMS).

    Args:
        image_ids: Per pose, the id of its image (results name it); poses of one image keep their given order.
        points: ``(N, K, 2)`` keypoints in image pixels.
        scores: ``(N, K)`` their scores.
        box_scores: The scores of the boxes the poses were found in.
        box_areas: The areas OKS NMS scales by (the padded boxes').
        category_id: The keypoint category's id.
        sigmas: OKS sigmas per keypoint.
        keypoint_score_threshold: Keypoints scoring above this make a pose's score.
        nms_threshold: OKS above which the weaker of two poses of an image is dropped.
    """
    by_image: dict[Hashable, list[int]] = defaultdict(list)
    for i, image_id in enumerate(image_ids):
        by_image[image_id].append(i)
    entries = []
    for image_id, members in by_image.items():
        pose_scores = []
        for i in members:
            confident = scores[i][scores[i] > keypoint_score_threshold]
            pose_scores.append(box_scores[i] * (float(confident.mean()) if len(confident) else 0.0))
        keep = range(len(members))
        if nms_threshold is not None and len(members) > 1:
            keep = oks_nms(points[members], np.array(pose_scores), np.array([box_areas[i] for i in members]),
                           sigmas, nms_threshold)
        for j in keep:
            i = members[j]
            values = np.concatenate([points[i], scores[i][:, None]], 1).astype(np.float64)
            entries.append({"image_id": image_id, "category_id": category_id,
                            "keypoints": values.ravel().round(3).tolist(), "score": float(pose_scores[j])})
    return entries
