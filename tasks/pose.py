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

import sys
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from torch import nn

from backbones import Backbone, Pyramid
from heads.pose import SimpleBaseline, gaussian_heatmaps, to_heatmap

from ._base import KestrelTask
from .cli import KestrelCLI, main
from .data.pose import PoseData, resolve_sigmas
from .optim import SchedulerCallable, WarmupMultiStepLR
from .reporting import PoseWriter


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
            CPUs and GPUs; docs/guides/benchmarking.md, "Faster where it is free").
        quantization: ``qat``: quantization-aware training, a fine-tune with fake quantization (from a float
            checkpoint: ``init_from``) whose checkpoints export to INT8 with the scales learned (``tasks.qat``);
            None: float.
    """

    main_metric = "ap"
    task = "pose"
    description = "pose (top-down SimpleBaseline heatmaps)"

    def label_count(self) -> str:
        return f"{len(self.keypoint_names)} keypoints"

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
        quantization: Literal["qat"] | None = None,
    ):
        super().__init__(optimizer, scheduler, norm_weight_decay, init_from, channels_last, quantization)
        self.keypoint_names = list(keypoint_names)
        self.image_size = tuple(image_size)
        self.sigmas = resolve_sigmas(self.keypoint_names, sigmas, "model.sigmas")
        self.skeleton = skeleton
        self.model = head(self.pyramid(backbone), self.keypoint_names)
        self.sigma = sigma
        self.keypoint_score_threshold = keypoint_score_threshold
        self.nms_threshold = nms_threshold

    def input_size(self) -> tuple[int, int]:
        return tuple(self.image_size)

    def metadata(self) -> dict:
        return {"task": self.task, "input_size": list(self.image_size), "keypoint_names": self.keypoint_names,
                "skeleton": self.skeleton, "sigmas": self.sigmas}

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        keypoints = torch.stack([t["keypoints"] for t in targets])
        heatmaps = self.model(images)
        stride = images.shape[-1] / heatmaps.shape[-1]
        targets, weights = gaussian_heatmaps(to_heatmap(keypoints[..., :2], stride), keypoints[..., 2] > 0,
                                             heatmaps.shape[-2:], self.sigma)
        w = weights[..., None, None]
        loss = F.mse_loss(heatmaps * w, targets * w)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def evaluator_options(self) -> dict:
        return {"sigmas": self.sigmas, "keypoint_score_threshold": self.keypoint_score_threshold,
                "nms_threshold": self.nms_threshold}

    def model_details(self) -> dict[str, str]:
        details = super().model_details()
        details["input size"] += " crops of person boxes (padded 1.25x)"
        details["flip test"] = str(getattr(self.model, "flip_test", "-"))
        return details


# What the data tells the model (LightningCLI links them when both are built from a config).
LINKS = {"data.keypoint_names": "model.keypoint_names", "data.image_size": "model.image_size",
         "data.sigmas": "model.sigmas", "data.skeleton": "model.skeleton"}


def cli_main(args: list[str] | None = None) -> KestrelCLI:
    """Run the pose command line (``args`` as on the command line; ``sys.argv`` if None)."""
    return KestrelCLI(PoseTask, PoseData, monitor="val/ap", links=LINKS, writer=PoseWriter, args=args)


if __name__ == "__main__":
    sys.exit(main(cli_main))
