"""Semantic segmentation: ``python -m tasks.segment {fit,validate,test,predict} --config CONFIG.yaml``.

Trains and evaluates DeepLabV3+ on any Kestrel backbone, on VOC or COCO folders. Evaluation scores
each image at its own resolution and aspect ratio: the network fits it into its ``image_size`` square
(padded, not squashed) and returns labels at the image's size. ``test`` writes ``report/metrics.json``
(``miou``, ``pixel_accuracy``, ``per_class_iou``) and ``report/report.md``; ``predict`` writes one
palette PNG of class indices per image into ``predictions/``, and each image with its labels drawn over it
and a legend into ``predictions/images/`` (``--draw false``: none); ``export`` writes the network.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.cli import OptimizerCallable
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from backbones import Backbone, Pyramid
from heads.deeplabv3plus import DeepLabV3Plus

from ._base import KestrelTask
from .cli import KestrelCLI, main
from .data.segmentation import SegmentationData
from .evaluation import VOID
from .optim import SchedulerCallable, WarmupPolyLR
from .reporting import SegmentationWriter


def _sgd(params) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)


class SegmentationTask(KestrelTask):
    """DeepLabV3+ semantic segmentation as a LightningModule.

    Args:
        backbone: The feature pyramid, dilated to output stride 16 or 8 with a stride-4 level:
            ``{name: mobilenet_v2, levels: [4, 32], output_stride: 16}`` or any pyramid by ``class_path``.
        class_names: Names of labels 1..K, background not included (linked from ``data.class_names``).
        category_ids: The data set's category id of each label (linked from ``data.category_ids``);
            1..K if None.
        image_size: Side of the square evaluation fits images into (linked from ``data.image_size``).
        head: Builds the model from the backbone, the class count and ``image_size``: DeepLabV3+ and
            its options.
        optimizer: Builds the optimizer from parameter groups; SGD (momentum 0.9) by default.
        scheduler: Builds the step-wise schedule; the DeepLab papers' "poly" decay by default.
        norm_weight_decay: Weight decay of norm weights and biases (None: the optimizer's).
        aux_weight: Weight of the auxiliary head's loss (when the head has one).
        dice_weight: Weight of a Dice loss added to the cross-entropy (0: none).
        init_from: Weights for the whole model (a Kestrel checkpoint or state dict).
        channels_last: Train, and run for inference, in channels-last memory (faster convolutions on
            CPUs and GPUs; docs/guides/benchmarking.md, "Faster where it is free").
        quantization: ``qat``: quantization-aware training, a fine-tune with fake quantization (from a float
            checkpoint: ``init_from``) whose checkpoints export to INT8 with the scales learned (``tasks.qat``);
            None: float.
    """

    main_metric = "miou"
    task = "segment"

    def __init__(
        self,
        backbone: Backbone | nn.Module,
        class_names: list[str],
        category_ids: list[int] | None = None,
        image_size: int = 513,
        head: Callable[[Pyramid, int, int], DeepLabV3Plus] = DeepLabV3Plus,
        optimizer: OptimizerCallable = _sgd,
        scheduler: SchedulerCallable = WarmupPolyLR,
        norm_weight_decay: float | None = 0.0,
        aux_weight: float = 0.4,
        dice_weight: float = 0.0,
        init_from: str | None = None,
        channels_last: bool = True,
        quantization: Literal["qat"] | None = None,
    ):
        super().__init__(optimizer, scheduler, norm_weight_decay, init_from, channels_last, quantization)
        self.set_classes(class_names, category_ids)
        self.image_size = image_size
        self.model = head(self.pyramid(backbone), self.num_classes, image_size)
        self.aux_weight = aux_weight
        self.dice_weight = dice_weight
        self.dice = DiceLoss("multiclass", ignore_index=VOID) if dice_weight else None

    @property
    def description(self) -> str:
        return f"semantic segmentation (DeepLabV3+, output stride {self.model.output_stride})"

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        target = torch.stack([t["mask"] for t in targets])
        out = self.model(images)
        losses = {"ce": F.cross_entropy(out["out"], target, ignore_index=VOID)}
        if "aux" in out:
            losses["aux"] = self.aux_weight * F.cross_entropy(out["aux"], target, ignore_index=VOID)
        if self.dice is not None:
            losses["dice"] = self.dice_weight * self.dice(out["out"], target)
        loss = sum(losses.values())
        self.log_dict({"train/loss": loss, **{f"train/{k}": v for k, v in losses.items()}},
                      prog_bar=True, batch_size=len(images))
        return loss

    def model_details(self) -> dict[str, str]:
        details = super().model_details()
        details["input size"] += ": each image fitted into it (aspect ratio kept, padded), labels at its own size"
        return details


# What the data tells the model (LightningCLI links them when both are built from a config).
LINKS = {"data.class_names": "model.class_names", "data.category_ids": "model.category_ids",
         "data.image_size": "model.image_size"}


def cli_main(args: list[str] | None = None) -> KestrelCLI:
    """Run the segmentation command line (``args`` as on the command line; ``sys.argv`` if None)."""
    return KestrelCLI(SegmentationTask, SegmentationData, monitor="val/miou", links=LINKS, writer=SegmentationWriter,
                      args=args)


if __name__ == "__main__":
    sys.exit(main(cli_main))
