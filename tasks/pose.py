"""Pose: ``python -m tasks.pose {fit,validate,test,predict} --config CONFIG.yaml``.

Top-down keypoint estimation with a SimpleBaseline heatmap head on any Kestrel backbone, on COCO
keypoint folders: person boxes (ground truth, or detections from ``data.det_file``) are cut out, the
network predicts keypoints in crop pixels (heatmaps averaged with the flipped crop's, decoded with
DARK) and they are mapped back to image coordinates through the crop. Poses are rescored by box
score x mean confident keypoint score and OKS-NMS'd per image, as mmpose does. ``test`` writes
``report/metrics.json`` (COCO OKS ``ap``, ``ap_50``, ...); ``predict`` writes
``predictions/keypoints.json`` in COCO keypoint results format, and each image with its skeletons drawn
into ``predictions/images/`` (``--draw false``: none); ``export`` writes the network.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import nn

from backbones import Backbone, Pyramid
from heads.pose import SimpleBaseline, gaussian_heatmaps, to_heatmap

from . import plots
from ._base import DRAW_SCORE, KestrelTask
from .cli import KestrelCLI, main
from .data.images import read_image
from .data.pose import PoseData, PoseSplit, apply_affine, resolve_sigmas
from .drawing import draw_poses, save_image
from .metrics.keypoints import coco_keypoint_metrics, keypoint_accuracy, oks_nms
from .optim import SchedulerCallable, WarmupMultiStepLR
from .report import write_report

POSE_HEADLINE = ["ap", "ap_50", "ap_75", "ap_medium", "ap_large", "ar"]


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=5e-4)


class PoseTask(KestrelTask):
    """Top-down heatmap pose estimation as a LightningModule.

    Args:
        backbone: The feature pyramid; the head uses its deepest level: ``{name: mobilenet_v2,
            levels: [32]}`` or any pyramid by ``class_path``.
        keypoint_names: The keypoints, in heatmap order (linked from ``data.keypoint_names``);
            ``left_*``/``right_*`` names give the flip pairs.
        image_size: The crops' ``[height, width]`` (linked from ``data.image_size``).
        sigmas: OKS sigmas per keypoint (linked from ``data.sigmas``); COCO's for COCO's keypoints,
            else 0.05, if None.
        skeleton: Pairs of 1-based keypoint indices to draw (linked from ``data.skeleton``).
        head: Builds the model from the backbone and the keypoint names: SimpleBaseline and its options
            (``flip_test``, ``blur_kernel`` among them).
        sigma: Standard deviation of the target Gaussians, in heatmap pixels (2 at 64x48).
        keypoint_score_threshold: Keypoints scoring above this make a pose's score (mmpose: 0.2).
        nms_threshold: OKS above which the weaker of two poses of an image is dropped; None: no NMS.
        optimizer: Builds the optimizer; Adam, lr 5e-4 by default (mmpose's recipe).
        scheduler: Builds the step-wise schedule; warm-up then x0.1 at epochs 170 and 200 by default.
        norm_weight_decay: Weight decay of norm weights and biases (None: the optimizer's).
        init_from: Weights for the whole model (a Kestrel checkpoint or state dict).
        channels_last: Train, and run for inference, in channels-last memory (faster convolutions on
            CPUs and GPUs; README, "Speed").
    """

    main_metric = "ap"
    task = "pose"

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        keypoint_names: list[str],
        image_size: tuple[int, int] = (256, 192),
        sigmas: list[float] | None = None,
        skeleton: list[list[int]] | None = None,
        head: Callable[[Pyramid, list[str]], SimpleBaseline] = SimpleBaseline,
        sigma: float = 2.0,
        keypoint_score_threshold: float = 0.2,
        nms_threshold: float | None = 0.9,
        optimizer: OptimizerCallable = _adam,
        scheduler: SchedulerCallable = WarmupMultiStepLR,
        norm_weight_decay: float | None = None,
        init_from: str | None = None,
        channels_last: bool = True,
    ):
        super().__init__(optimizer, scheduler, norm_weight_decay, init_from, channels_last)
        self.keypoint_names = list(keypoint_names)
        self.image_size = tuple(image_size)
        self.sigmas = resolve_sigmas(self.keypoint_names, sigmas, "model.sigmas")
        self.skeleton = skeleton
        self.model = head(self.pyramid(backbone), self.keypoint_names)
        self.sigma = sigma
        self.keypoint_score_threshold = keypoint_score_threshold
        self.nms_threshold = nms_threshold

    def metadata(self) -> dict:
        return {"task": self.task, "input_size": list(self.image_size), "keypoint_names": self.keypoint_names,
                "skeleton": self.skeleton, "sigmas": self.sigmas}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, keypoints, _ = batch
        keypoints = torch.stack(keypoints)
        heatmaps = self.model(images)
        stride = images.shape[-1] / heatmaps.shape[-1]
        targets, weights = gaussian_heatmaps(to_heatmap(keypoints[..., :2], stride), keypoints[..., 2] > 0,
                                             heatmaps.shape[-2:], self.sigma)
        w = weights[..., None, None]
        loss = F.mse_loss(heatmaps * w, targets * w)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    # ----------------------------------------------------------------- evaluation
    def collect(self, batch) -> None:
        """Keypoints mapped from crop to image coordinates, and their scores, kept by instance index."""
        images, _, meta = batch
        for out, info in zip(self.predict_images(images), meta):
            points = out["keypoints"].cpu().numpy()
            self.keep(info["index"], (apply_affine(info["matrix"], points[:, :2]), points[:, 2], info["score"],
                                      info["area"]))

    def results(self, split: PoseSplit, kept: dict[int, tuple], sigmas: list[float]) -> list[dict]:
        """COCO keypoint results of the kept poses: rescored, OKS-NMS'd per image, with the data's ids."""
        by_image: dict[int, list[tuple]] = defaultdict(list)
        for index, (points, scores, box_score, area) in sorted(kept.items()):
            confident = scores[scores > self.keypoint_score_threshold]
            pose_score = box_score * (float(confident.mean()) if len(confident) else 0.0)
            by_image[split.instances[index].record].append((points, scores, pose_score, area))
        entries = []
        for record, poses in sorted(by_image.items()):
            keep = range(len(poses))
            if self.nms_threshold is not None and len(poses) > 1:
                keep = oks_nms(np.stack([p[0] for p in poses]), np.array([p[2] for p in poses]),
                               np.array([p[3] for p in poses]), sigmas, self.nms_threshold)
            for i in keep:
                points, scores, pose_score, _ = poses[i]
                values = np.concatenate([points, scores[:, None]], 1).astype(np.float64)
                entries.append({"image_id": split.images[record].image_id, "category_id": split.category_id,
                                "keypoints": values.ravel().round(3).tolist(), "score": float(pose_score)})
        return entries

    def evaluate(self, split: PoseSplit, kept: dict[int, tuple]) -> dict:
        sigmas = self.sigmas
        if split.coco_gt is None:
            raise ValueError(f"{split.description} has no keypoint annotations to evaluate against")
        metrics = coco_keypoint_metrics(split.coco_gt, self.results(split, kept, sigmas), sigmas, split.category_id)
        if metrics["ap"] is None:
            raise ValueError(f"{split.description} has no person with labelled keypoints to evaluate against")
        return metrics

    def write_report(self, log_dir: str, split: PoseSplit, results: dict[int, tuple], metrics: dict,
                     seconds: float) -> Path:
        counts = {"images": len(split.images), "person boxes": len(split.instances),
                  "keypoints": len(self.keypoint_names)}
        run = self.run_details("pose (top-down SimpleBaseline heatmaps)", self.image_size, split.description,
                               counts, seconds)
        run["input size"] += " crops of person boxes (padded 1.25x)"
        run["flip test"] = getattr(self.model, "flip_test", "-")
        notes = [
            "COCO OKS numbers are COCOeval's (faster-coco-eval, equal to pycocotools, iouType keypoints) "
            f"with sigmas {self.sigmas}, predictions mapped back to original image coordinates.",
            f"Pose score = box score x mean keypoint score above {self.keypoint_score_threshold}; "
            + (f"OKS NMS at {self.nms_threshold} per image." if self.nms_threshold is not None else "no NMS."),
            "n/a: no ground truth of that size in this split (COCOeval's -1).",
        ]
        figures = {"samples": self.samples(split, results), **self.learning_curves()}
        per_keypoint = {}
        labelled = [i for i in sorted(results) if (split.instances[i].keypoints[:, 2] > 0).any()]
        if labelled:  # ground-truth boxes: each pose belongs to the ground truth it was cut from
            accuracy = keypoint_accuracy(np.stack([results[i][0] for i in labelled]),
                                         np.stack([split.instances[i].keypoints for i in labelled]),
                                         np.array([split.instances[i].area for i in labelled]), self.sigmas)
            per_keypoint = {name: {"accuracy": a} for name, a in zip(self.keypoint_names, accuracy)}
            figures["per_keypoint_accuracy"] = plots.bars(dict(zip(self.keypoint_names, accuracy)),
                                                          "Keypoints with OKS similarity >= 0.5", "fraction")
            notes.append("Per-keypoint accuracy: the fraction of labelled keypoints whose OKS similarity term "
                         "exp(-d^2 / (2 area (2 sigma)^2)) is at least 0.5, on the ground-truth boxes.")
        return write_report(log_dir, "Pose report", metrics, POSE_HEADLINE + ["ar_50", "ar_75"], per_keypoint,
                            ["accuracy"], run, notes, figures, per_class_label="keypoint")

    def samples(self, split: PoseSplit, results: dict[int, tuple], count: int = 4):
        """Ground-truth skeletons (green) beside the predicted ones (red), for the first images with people."""
        by_image: dict[int, list[int]] = defaultdict(list)
        for index in sorted(results):
            by_image[split.instances[index].record].append(index)
        edges = self.edges()
        panels, titles = [], []
        for record in sorted(by_image)[:count]:
            image = torch.from_numpy(read_image(split.images[record].file)).permute(2, 0, 1)
            truth = np.stack([split.instances[i].keypoints for i in by_image[record]])
            shown = [results[i] for i in by_image[record] if results[i][2] >= DRAW_SCORE]
            panels.append(draw_poses(image, truth[..., :2], truth[..., 2] > 0, edges, colours=(0, 255, 0)))
            panels.append(self.drawn(image, [p for p, _, _, _ in shown], [s for _, s, _, _ in shown], (255, 0, 0)))
            titles += [f"{split.images[record].file.name}: ground truth",
                       f"prediction (keypoint score > {self.keypoint_score_threshold})"]
        return plots.grid(panels, titles)

    def edges(self) -> list[tuple[int, int]]:
        """The skeleton's limbs as 0-based keypoint pairs."""
        return [(a - 1, b - 1) for a, b in self.skeleton or []]

    def drawn(self, image: torch.Tensor, points: list[np.ndarray], scores: list[np.ndarray],
              colours=None) -> torch.Tensor:
        """The image with skeletons (``(K, 2)`` points each, keypoints scoring above the keypoint threshold)."""
        if not points:
            return image
        return draw_poses(image, np.stack(points), np.stack(scores) > self.keypoint_score_threshold, self.edges(),
                          colours)

    # ----------------------------------------------------------------- prediction
    def predict_step(self, batch, batch_idx: int) -> None:
        self.collect(batch)

    def on_predict_epoch_end(self) -> None:
        kept = self.gathered()
        log_dir = self.log_dir()
        if not self.trainer.is_global_zero:
            return
        split = self.trainer.datamodule.split("predict")
        entries = self.results(split, kept, self.sigmas)
        folder = Path(log_dir) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "keypoints.json").write_text(json.dumps(entries))
        if self.drawing is not None:  # every image, the people whose pose scores at least DRAW_SCORE drawn
            poses: dict[int, list[dict]] = defaultdict(list)
            for entry in entries:
                if entry["score"] >= DRAW_SCORE:
                    poses[entry["image_id"]].append(np.reshape(entry["keypoints"], (-1, 3)))
            for image_info in split.images:
                image = torch.from_numpy(read_image(image_info.file)).permute(2, 0, 1)
                found = poses.get(image_info.image_id, [])
                save_image(self.drawn(image, [p[:, :2] for p in found], [p[:, 2] for p in found]),
                           self.drawing / image_info.file.name)
        print(f"Predictions: {folder / 'keypoints.json'} ({len(entries)} poses on {len(split.images)} images)"
              + self.drawing_note())


# What the data tells the model (LightningCLI links them when both are built from a config).
LINKS = {"data.keypoint_names": "model.keypoint_names", "data.image_size": "model.image_size",
         "data.sigmas": "model.sigmas", "data.skeleton": "model.skeleton"}


def cli_main(args: list[str] | None = None) -> KestrelCLI:
    """Run the pose command line (``args`` as on the command line; ``sys.argv`` if None)."""
    return KestrelCLI(PoseTask, PoseData, monitor="val/ap", links=LINKS, args=args)


if __name__ == "__main__":
    sys.exit(main(cli_main))
