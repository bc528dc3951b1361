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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_lightning.cli import OptimizerCallable
from segmentation_models_pytorch.losses import DiceLoss
from torch import nn

from backbones import Backbone, Pyramid
from heads.deeplabv3plus import DeepLabV3Plus

from . import plots
from ._base import KestrelTask
from .cli import KestrelCLI, main
from .data.images import read_image
from .data.segmentation import VOID, SegmentationData, SegmentationSplit
from .data.voc import VOC_PALETTE
from .drawing import draw_labels, save_image
from .metrics import confusion_matrix, segmentation_metrics
from .optim import SchedulerCallable, WarmupPolyLR
from .report import write_report

SAMPLES = 4  # images shown in the report


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
            CPUs and GPUs; README, "Speed").
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
    ):
        super().__init__(optimizer, scheduler, norm_weight_decay, init_from, channels_last)
        self.set_classes(class_names, category_ids)
        self.image_size = image_size
        self.model = head(self.pyramid(backbone), self.num_classes, image_size)
        self.aux_weight = aux_weight
        self.dice_weight = dice_weight
        self.dice = DiceLoss("multiclass", ignore_index=VOID) if dice_weight else None
        self._predictions: Path | None = None

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks, _ = batch
        target = torch.stack(masks)
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

    # ----------------------------------------------------------------- evaluation
    def _labels(self, images) -> list[torch.Tensor]:
        """Per image, the predicted labels at its own resolution."""
        return [out["labels"] for out in self.predict_images(images)]

    def collect(self, batch) -> None:
        """Per image its confusion matrix, and for the first few images (the report's samples) the labels."""
        images, masks, meta = batch
        labels = self.num_classes + 1
        for prediction, mask, info in zip(self._labels(images), masks, meta):
            sample = prediction.to(torch.uint8).cpu() if info["index"] < SAMPLES else None
            self.keep(info["index"], (confusion_matrix(prediction, mask, labels).cpu().numpy(), sample))

    def evaluate(self, split: SegmentationSplit, results: dict[int, tuple]) -> dict:
        """mIoU, pixel accuracy and per-class IoU of the summed per-image confusion matrices."""
        total = np.sum([confusion for confusion, _ in results.values()], axis=0)
        return segmentation_metrics(total, split.label_names)

    def write_report(self, log_dir: str, split: SegmentationSplit, results: dict[int, tuple], metrics: dict,
                     seconds: float) -> Path:
        size = self.image_size
        run = self.run_details(f"semantic segmentation (DeepLabV3+, output stride {self.model.output_stride})",
                               (size, size), split.description, {"images": len(split.records)}, seconds)
        run["input size"] += ": each image fitted into it (aspect ratio kept, padded), labels at its own size"
        notes = [
            "IoU = TP / (TP + FP + FN) over every pixel of the split; void pixels (255) are ignored.",
            "n/a: a class absent from both ground truth and predictions has no IoU and is left out of the mean.",
        ]
        per_class = {name: {"iou": v} for name, v in metrics["per_class_iou"].items()}
        total = np.sum([confusion for confusion, _ in results.values()], axis=0)
        figures = {
            "per_class_iou": plots.bars(metrics["per_class_iou"], "IoU per class", "IoU"),
            "confusion_matrix": plots.confusion(total, split.label_names),
            "samples": self.samples(split, results),
            **self.learning_curves(),
        }
        return write_report(log_dir, "Segmentation report", metrics, ["miou", "pixel_accuracy"], per_class,
                            ["iou"], run, notes, figures)

    def samples(self, split: SegmentationSplit, results: dict[int, tuple]):
        """Ground truth beside the prediction, as overlays with a legend, for the first images."""
        panels, titles = [], []
        for index in sorted(i for i, (_, sample) in results.items() if sample is not None):
            record = split.records[index]
            image = torch.from_numpy(read_image(record.file)).permute(2, 0, 1)
            truth = split.mask(record)
            for labels, title in ((None if truth is None else torch.from_numpy(truth), "ground truth"),
                                  (results[index][1], "prediction")):
                panels.append(image if labels is None else draw_labels(image, labels, split.label_names))
                titles.append(f"{record.file.name}: {title}")
        return plots.grid(panels, titles)

    # ----------------------------------------------------------------- prediction
    def on_predict_epoch_start(self) -> None:
        super().on_predict_epoch_start()
        self._predictions = Path(self.log_dir()) / "predictions"
        self._predictions.mkdir(parents=True, exist_ok=True)

    def predict_step(self, batch, batch_idx: int) -> None:
        """Write each image's labels, at its own size, as ``predictions/<image>.png`` (nothing is kept in
        memory: a data set's full-resolution label maps would not fit), and the image with them drawn over
        it and a legend into ``predictions/images/`` (unless ``predict --draw false``)."""
        labels = self._labels(batch[0])
        records = self.trainer.datamodule.split("predict").records
        names = ["background", *self.class_names]
        for image, prediction, info in zip(batch[0], labels, batch[2]):
            prediction = prediction.to(torch.uint8).cpu()
            file = records[info["index"]].file
            png = Image.fromarray(prediction.numpy(), mode="P")
            png.putpalette(VOC_PALETTE)
            png.save(self._predictions / f"{file.stem}.png")
            if self.drawing is not None:
                save_image(draw_labels(image.cpu(), prediction, names), self.drawing / file.name)

    def on_predict_epoch_end(self) -> None:
        self.trainer.strategy.barrier()  # every process has written its PNGs
        if self.trainer.is_global_zero:
            count = len(list(self._predictions.glob("*.png")))
            print(f"Predictions: {self._predictions} ({count} palette PNGs of class indices)" + self.drawing_note())


# What the data tells the model (LightningCLI links them when both are built from a config).
LINKS = {"data.class_names": "model.class_names", "data.category_ids": "model.category_ids",
         "data.image_size": "model.image_size"}


def cli_main(args: list[str] | None = None) -> KestrelCLI:
    """Run the segmentation command line (``args`` as on the command line; ``sys.argv`` if None)."""
    return KestrelCLI(SegmentationTask, SegmentationData, monitor="val/miou", links=LINKS, args=args)


if __name__ == "__main__":
    sys.exit(main(cli_main))
