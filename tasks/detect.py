"""Detection: ``python -m tasks.detect {fit,validate,test,predict,export} --config CONFIG.yaml``.

Trains and evaluates an SSDLite detector on any Kestrel backbone, on COCO or VOC folders. ``test``
writes ``report/metrics.json`` and ``report/report.md`` into the run's log folder (COCO numbers by
COCOeval on the data set's own ground truth; VOC07/VOC12 mAP@0.5 too on VOC data: the data's
``DetectionEvaluator``); ``predict`` writes ``predictions/detections.json`` in COCO results format with
the data set's own ids, and each image with its detections drawn into ``predictions/images/``
(``--draw false``: none; ``tasks.reporting.DetectionWriter``); ``export`` writes the detector, NMS
included, as ONNX or OpenVINO (see ``tasks.deploy.export``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from torch import nn

from backbones import Backbone, Pyramid
from heads.ssdlite import SSDLite

from ._base import KestrelTask
from .cli import KestrelCLI, main
from .data.detection import DetectionData
from .optim import SchedulerCallable, WarmupCosineLR
from .reporting import DetectionWriter


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.15, momentum=0.9, weight_decay=4e-5)


def _is_torchvision_ssdlite(state: dict) -> bool:
    return "backbone.features.0.0.0.weight" in state and any(k.startswith("backbone.extra.") for k in state)


class DetectionTask(KestrelTask):
    """SSDLite detection as a LightningModule.

    Args:
        backbone: The feature pyramid: ``{name: ..., ...}`` (a registered backbone, see
            ``backbones.Backbone``) or any ``backbones.Pyramid`` by ``class_path``.
        class_names: Names of labels 1..K (linked from ``data.class_names``).
        category_ids: The data set's category id of each label (linked from ``data.category_ids``);
            1..K if None.
        image_size: Side of the square input (linked from ``data.image_size``).
        head: Builds the detector from the backbone, ``num_classes`` and ``image_size``: SSDLite and
            its options.
        optimizer: Builds the optimizer from parameter groups (norm weights and biases get
            ``norm_weight_decay``); SGD with momentum 0.9 by default.
        scheduler: Builds the step-wise schedule from the optimizer and the training length.
        norm_weight_decay: Weight decay of norm weights and biases (None: the optimizer's).
        init_from: Weights for the whole model: a Kestrel checkpoint or state dict, or a state dict
            saved from torchvision's ``ssdlite320_mobilenet_v3_large`` (with torchvision's 91-class
            COCO layout remapped to the data's categories, or any matching class count).
        channels_last: Train, and run for inference, in channels-last memory (faster convolutions on
            CPUs and GPUs; docs/guides/benchmarking.md, "Faster where it is free").
        quantization: ``qat``: quantization-aware training, a fine-tune with fake quantization (from a float
            checkpoint: ``init_from``) whose checkpoints export to INT8 with the scales learned (``tasks.qat``);
            None: float.
    """

    main_metric = "map"
    task = "detect"
    description = "detection (SSDLite)"

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        class_names: list[str],
        category_ids: list[int] | None = None,
        image_size: int = 320,
        head: Callable[[Pyramid, int, int], SSDLite] = SSDLite,
        optimizer: OptimizerCallable = _sgd,
        scheduler: SchedulerCallable = WarmupCosineLR,
        norm_weight_decay: float | None = 0.0,
        init_from: str | None = None,
        channels_last: bool = True,
        quantization: Literal["qat"] | None = None,
    ):
        super().__init__(optimizer, scheduler, norm_weight_decay, init_from, channels_last, quantization)
        self.set_classes(class_names, category_ids)
        self.image_size = image_size
        self.model = head(self.pyramid(backbone), self.num_classes, image_size)

    def convert_init_weights(self, path: str, state: dict[str, torch.Tensor],
                             datamodule: pl.LightningDataModule | None = None) -> dict[str, torch.Tensor]:
        """torchvision's SSDLite weights become Kestrel's; its 91-class COCO layout maps onto COCO data."""
        if not _is_torchvision_ssdlite(state):
            return state
        classes = state["head.classification_head.module_list.0.1.bias"].numel() // (
            state["head.regression_head.module_list.0.1.bias"].numel() // 4
        )
        ids = self.category_ids
        remap = (classes != self.num_classes + 1 and classes == 91 and getattr(datamodule, "format", None) == "coco"
                 and max(ids) < 91)
        # other class layouts keep their rows: fit starts the class layers afresh, test refuses them
        return self.model.from_torchvision(state, ids if remap else None)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self.model(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        loss = losses["bbox_regression"] + losses["classification"]
        self.log_dict(
            {"train/loss": loss, "train/box": losses["bbox_regression"], "train/cls": losses["classification"]},
            prog_bar=True, batch_size=len(images),
        )
        return loss


# What the data tells the model (LightningCLI links them when both are built from a config).
LINKS = {"data.class_names": "model.class_names", "data.category_ids": "model.category_ids",
         "data.image_size": "model.image_size"}


def cli_main(args: list[str] | None = None) -> KestrelCLI:
    """Run the detection command line (``args`` as on the command line; ``sys.argv`` if None)."""
    return KestrelCLI(DetectionTask, DetectionData, monitor="val/map", links=LINKS, writer=DetectionWriter, args=args)


if __name__ == "__main__":
    sys.exit(main(cli_main))
