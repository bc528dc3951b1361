"""Top-down pose scored as COCO OKS AP (faster-coco-eval, equal to pycocotools, iouType keypoints)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ._base import Evaluator, Report, Sample, cat, image_position, unique_positions
from .keypoints import apply_affine, coco_keypoint_metrics, keypoint_accuracy, pose_results

HEADLINE = ["ap", "ap_50", "ap_75", "ap_medium", "ap_large", "ar"]


class PoseImage(Protocol):
    """What the evaluator needs of one image of the split (``tasks.data.pose.PoseImage``)."""

    file: Path
    image_id: int | str


class PoseEvaluator(Evaluator):
    """COCO OKS AP of keypoints predicted in person crops (``keypoints`` ``(K, 3)`` x, y in crop pixels and a
    score), mapped back to their images by each target's ``matrix``, rescored and OKS-NMS'd per image
    (:func:`tasks.evaluation.keypoints.pose_results`).

    Args:
        images: The split's images.
        ground_truth: The keypoint annotation file's content (None: nothing to evaluate against).
        category_id: The keypoint category's id.
        keypoint_names: The keypoints, in the network's order.
        sigmas: OKS sigmas per keypoint.
        skeleton: The limbs drawn in samples, as 1-based keypoint pairs.
        keypoint_score_threshold: Keypoints scoring above this make a pose's score (mmpose: 0.2).
        nms_threshold: OKS above which the weaker of two poses of an image is dropped; None: no NMS.
        description: Which data, for reports and errors.
    """

    main_metric = "ap"

    def __init__(self, images: Sequence[PoseImage], ground_truth: dict | None, category_id: int,
                 keypoint_names: Sequence[str], sigmas: Sequence[float],
                 skeleton: Sequence[Sequence[int]] | None = None, keypoint_score_threshold: float = 0.2,
                 nms_threshold: float | None = 0.9, description: str = ""):
        super().__init__(description)
        self.images = list(images)
        self.ground_truth = ground_truth
        self.category_id = category_id
        self.keypoint_names = list(keypoint_names)
        self.sigmas = list(sigmas)
        self.skeleton = [(a - 1, b - 1) for a, b in skeleton or []]
        self.keypoint_score_threshold = keypoint_score_threshold
        self.nms_threshold = nms_threshold
        self._position = {image.image_id: i for i, image in enumerate(self.images)}
        for name in ("positions", "instances", "points", "scores", "box_scores", "box_areas", "truths", "areas"):
            self.add_state(name, [], dist_reduce_fx="cat")

    def update(self, outputs: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, Any]]) -> None:
        for out, target in zip(outputs, targets, strict=True):
            keypoints = out["keypoints"].detach().cpu().numpy()
            points = apply_affine(np.asarray(target["matrix"]), keypoints[:, :2])
            position = image_position(self._position, target["image_id"], self.description)
            device, double = self.device, torch.float64
            self.positions.append(torch.tensor([position], device=device))
            self.instances.append(torch.tensor([int(target["instance"])], device=device))
            self.points.append(torch.from_numpy(points)[None].to(device))
            self.scores.append(torch.from_numpy(keypoints[None, :, 2].copy()).to(device))
            self.box_scores.append(torch.tensor([float(target["box_score"])], dtype=double, device=device))
            self.box_areas.append(torch.tensor([float(target["box_area"])], dtype=double, device=device))
            self.truths.append(torch.as_tensor(np.asarray(target["truth"]), dtype=torch.float32)[None].to(device))
            self.areas.append(torch.tensor([float(target["area"])], dtype=double, device=device))

    def poses(self) -> dict[str, np.ndarray]:
        """Every evaluated person box's keypoints in image pixels, by image then instance: ``positions``,
        ``points`` ``(N, K, 2)``, ``scores`` ``(N, K)``, ``box_scores``, ``box_areas``, ``truths`` ``(N, K, 3)``
        and ``areas`` (the ground truth's, for OKS)."""
        k = len(self.keypoint_names)
        instances = np.asarray(unique_positions(self.instances, self.description), np.int64)
        arrays = {
            "positions": cat(self.positions, torch.zeros(0, dtype=torch.long)).cpu().numpy(),
            "points": cat(self.points, torch.zeros(0, k, 2, dtype=torch.float64)).cpu().numpy(),
            "scores": cat(self.scores, torch.zeros(0, k)).cpu().numpy(),
            "box_scores": cat(self.box_scores, torch.zeros(0, dtype=torch.float64)).cpu().numpy(),
            "box_areas": cat(self.box_areas, torch.zeros(0, dtype=torch.float64)).cpu().numpy(),
            "truths": cat(self.truths, torch.zeros(0, k, 3)).cpu().numpy(),
            "areas": cat(self.areas, torch.zeros(0, dtype=torch.float64)).cpu().numpy(),
        }
        order = np.lexsort((instances, arrays["positions"]))
        return {name: value[order] for name, value in arrays.items()}

    def compute(self) -> dict[str, Any]:
        """``ap``, ``ap_50``, ``ap_75``, ``ap_medium``, ``ap_large``, ``ar``, ``ar_50``, ``ar_75``, ``ar_medium``,
        ``ar_large`` as COCOeval's ``stats`` with these sigmas; None where the split has none of that size."""
        if self.ground_truth is None:
            raise ValueError(f"{self.description} has no keypoint annotations to evaluate against")
        poses = self.poses()
        results = pose_results([self.images[p].image_id for p in poses["positions"]], poses["points"],
                               poses["scores"], poses["box_scores"], poses["box_areas"], self.category_id,
                               self.sigmas, self.keypoint_score_threshold, self.nms_threshold)
        metrics = coco_keypoint_metrics(self.ground_truth, results, self.sigmas, self.category_id)
        if metrics["ap"] is None:
            raise ValueError(f"{self.description} has no person with labelled keypoints to evaluate against")
        self._details = {"metrics": metrics, "poses": poses}
        return metrics

    def report(self) -> Report:
        details = self._computed_details()
        metrics, poses = details["metrics"], details["poses"]
        notes = [
            "COCO OKS numbers are COCOeval's (faster-coco-eval, equal to pycocotools, iouType keypoints) "
            f"with sigmas {self.sigmas}, predictions mapped back to original image coordinates.",
            f"Pose score = box score x mean keypoint score above {self.keypoint_score_threshold}; "
            + (f"OKS NMS at {self.nms_threshold} per image." if self.nms_threshold is not None else "no NMS."),
            "n/a: no ground truth of that size in this split (COCOeval's -1).",
        ]
        table, bars = {}, {}
        labelled = (poses["truths"][..., 2] > 0).any(1)
        if labelled.any():  # ground-truth boxes: each pose belongs to the ground truth it was cut from
            accuracy = keypoint_accuracy(poses["points"][labelled], poses["truths"][labelled], poses["areas"][labelled],
                                         self.sigmas)
            table = {name: {"accuracy": a} for name, a in zip(self.keypoint_names, accuracy)}
            bars["per_keypoint_accuracy"] = (dict(zip(self.keypoint_names, accuracy)),
                                             "Keypoints with OKS similarity >= 0.5", "fraction")
            notes.append("Per-keypoint accuracy: the fraction of labelled keypoints whose OKS similarity term "
                         "exp(-d^2 / (2 area (2 sigma)^2)) is at least 0.5, on the ground-truth boxes.")
        members: dict[int, list[int]] = defaultdict(list)
        for i, position in enumerate(poses["positions"].tolist()):
            members[position].append(i)
        samples = []
        for position in sorted(members)[:4]:
            rows = members[position]
            truth = poses["truths"][rows]
            samples.append(Sample(self.images[position].file,
                                  {"keypoints": truth[..., :2], "visible": truth[..., 2] > 0},
                                  {"keypoints": poses["points"][rows],
                                   "visible": poses["scores"][rows] > self.keypoint_score_threshold,
                                   "box_scores": poses["box_scores"][rows]}))
        return Report(
            task="pose", title="Pose report", metrics=metrics, headline=HEADLINE + ["ar_50", "ar_75"], table=table,
            columns=["accuracy"], row_label="keypoint", notes=notes,
            counts={"images": len(self.images), "person boxes": len(poses["positions"]),
                    "keypoints": len(self.keypoint_names)},
            data=self.description, bars=bars, samples=samples,
            sample_caption=f"prediction (keypoint score > {self.keypoint_score_threshold})", skeleton=self.skeleton,
        )
