"""Detection: ``python -m tasks.detect {fit,validate,test,predict} --config CONFIG.yaml``.

Trains and evaluates an SSDLite detector on any Kestrel backbone, on COCO or VOC folders. ``test``
writes ``report/metrics.json`` and ``report/report.md`` into the run's log folder (COCO numbers by
COCOeval on the data set's own ground truth; VOC07/VOC12 mAP@0.5 too on VOC data); ``predict`` writes
``predictions/detections.json`` in COCO results format with the data set's own ids, and each image with
its detections drawn into ``predictions/images/`` (``--draw false``: none); ``export`` writes
the detector, NMS included, as ONNX or OpenVINO (see ``tasks.export``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from pytorch_lightning.cli import OptimizerCallable
from torch import nn

from backbones import Backbone, Pyramid
from heads.ssdlite import SSDLite

from . import plots
from ._base import DRAW_SCORE, KestrelTask
from .cli import KestrelCLI, main
from .data.detection import DetectionData, DetectionSplit
from .data.images import read_image
from .drawing import draw_boxes, save_image
from .metrics import coco_detection_metrics, detections_to_coco, voc_detection_metrics
from .optim import SchedulerCallable, WarmupCosineLR
from .report import write_report

DETECTION_HEADLINE = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"]


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
            CPUs and GPUs; README, "Speed").
    """

    main_metric = "map"
    task = "detect"

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
    ):
        super().__init__(optimizer, scheduler, norm_weight_decay, init_from, channels_last)
        self.set_classes(class_names, category_ids)
        self.image_size = image_size
        self.model = head(self.pyramid(backbone), self.num_classes, image_size)
        self._precision = None  # COCOeval's precision array of the last evaluation, for the report

    def convert_init_weights(self, path: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """torchvision's SSDLite weights become Kestrel's; its 91-class COCO layout maps onto COCO data."""
        if not _is_torchvision_ssdlite(state):
            return state
        classes = state["head.classification_head.module_list.0.1.bias"].numel() // (
            state["head.regression_head.module_list.0.1.bias"].numel() // 4
        )
        class_ids = None
        if classes != self.num_classes + 1:
            datamodule = getattr(self._trainer, "datamodule", None)
            ids = self.category_ids
            if not (classes == 91 and getattr(datamodule, "format", None) == "coco" and max(ids) < 91):
                raise ValueError(
                    f"init_from {path!r}: torchvision's head has {classes} classes with background, this "
                    f"model {self.num_classes} + 1; only torchvision's 91-class COCO layout can be remapped "
                    "(onto COCO data's categories)"
                )
            class_ids = ids
        return self.model.from_torchvision(state, class_ids)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        losses = self.model(images, targets)
        loss = losses["bbox_regression"] + losses["classification"]
        self.log_dict(
            {"train/loss": loss, "train/box": losses["bbox_regression"], "train/cls": losses["classification"]},
            prog_bar=True, batch_size=len(images),
        )
        return loss

    # ----------------------------------------------------------------- evaluation
    def collect(self, batch) -> list[dict[str, torch.Tensor]]:
        """Detect (boxes in each image's own pixels) and keep the detections by image index."""
        images, _, meta = batch
        detections = self.predict_images(images)
        for det, info in zip(detections, meta):
            self.keep(info["index"], tuple(det[k].cpu().numpy() for k in ("boxes", "scores", "labels")))
        return detections

    def evaluate(self, split: DetectionSplit, results: dict[int, tuple]) -> dict:
        """COCO metrics (and VOC07/VOC12 for VOC data) of ``results`` ({record index: detections})."""
        detections = []
        for index, (boxes, scores, labels) in sorted(results.items()):
            category_ids = [split.category_ids[label - 1] for label in labels.tolist()]
            detections += detections_to_coco(split.records[index].eval_id, boxes, scores, category_ids)
        metrics, self._precision = coco_detection_metrics(split.coco_gt, detections, split.class_names,
                                                          return_precision=True)
        if metrics["map"] is None:
            raise ValueError(f"{split.description} has no ground-truth objects to evaluate against")
        if split.voc_gt is not None:
            by_eval_id = {split.records[i].eval_id: r for i, r in results.items()}
            voc = voc_detection_metrics(split.voc_gt, by_eval_id, split.class_names)
            metrics["voc07_map_50"], metrics["voc12_map_50"] = voc["voc07_map_50"], voc["voc12_map_50"]
            for name, values in voc["per_class"].items():
                metrics["per_class"][name].update(values)
        return metrics

    def write_report(self, log_dir: str, split: DetectionSplit, results: dict[int, tuple], metrics: dict,
                     seconds: float) -> Path:
        voc = split.voc_gt is not None
        size = self.image_size
        counts = {"images": len(split.records), "objects": sum(len(r.boxes) for r in split.records)}
        run = self.run_details("detection (SSDLite)", (size, size), split.description, counts, seconds)
        notes = [
            "COCO numbers are COCOeval's (faster-coco-eval, equal to pycocotools) on the data set's own "
            "ground truth, with predictions mapped back to original image coordinates and ids.",
            "n/a: no ground truth of that size or class in this split (COCOeval's -1).",
        ]
        if voc:
            notes.append("VOC07 (11-point) and VOC12 (area) AP at IoU 0.5 ignore difficult objects; in the COCO "
                         "numbers difficult objects are crowd regions.")
        headline = DETECTION_HEADLINE + (["voc07_map_50", "voc12_map_50"] if voc else [])
        columns = ["ap", "ap_50"] + (["voc07_ap_50", "voc12_ap_50"] if voc else [])
        figures = {"per_class_ap": plots.bars({n: v["ap"] for n, v in metrics["per_class"].items()},
                                              "AP@[.5:.95] per class", "AP"),
                   "samples": self.samples(split, results), **self.learning_curves()}
        if self._precision is not None:
            figures["precision_recall"] = plots.precision_recall(self._precision, split.class_names)
        return write_report(log_dir, "Detection report", metrics, headline, metrics["per_class"], columns, run, notes,
                            figures)

    def samples(self, split: DetectionSplit, results: dict[int, tuple], count: int = 4):
        """Ground truth beside the detections scoring at least ``DRAW_SCORE``, on the first few images."""
        panels, titles = [], []
        for index in sorted(results)[:count]:
            record = split.records[index]
            image = torch.from_numpy(read_image(record.file)).permute(2, 0, 1)
            truth = draw_boxes(image, record.boxes, record.labels, split.class_names)
            panels += [truth, self.drawn(image, results[index])]
            titles += [f"{record.file.name}: ground truth", f"detections (score >= {DRAW_SCORE})"]
        return plots.grid(panels, titles)

    def drawn(self, image: torch.Tensor, detections: tuple) -> torch.Tensor:
        """The image with its detections scoring at least ``DRAW_SCORE``: boxes, class names and scores."""
        boxes, scores, labels = detections
        keep = scores >= DRAW_SCORE
        return draw_boxes(image, boxes[keep], labels[keep], self.class_names, scores[keep])

    # ----------------------------------------------------------------- prediction
    def predict_step(self, batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """Per image ``{"boxes", "scores", "labels"}``, boxes in original image coordinates; each image with
        them drawn into ``predictions/images/`` (unless ``predict --draw false``)."""
        detections = self.collect(batch)
        if self.drawing is not None:
            records = self.trainer.datamodule.split("predict").records
            for image, info in zip(batch[0], batch[2]):
                save_image(self.drawn(image.cpu(), self._results[info["index"]]),
                           self.drawing / records[info["index"]].file.name)
        return detections

    def on_predict_epoch_end(self) -> None:
        results = self.gathered()
        log_dir = self.log_dir()
        if not self.trainer.is_global_zero:
            return
        split = self.trainer.datamodule.split("predict")
        entries = []
        for index, (boxes, scores, labels) in sorted(results.items()):
            category_ids = [split.category_ids[label - 1] for label in labels.tolist()]
            entries += detections_to_coco(split.records[index].image_id, boxes, scores, category_ids)
        folder = Path(log_dir) / "predictions"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "detections.json").write_text(json.dumps(entries))
        print(f"Predictions: {folder / 'detections.json'} ({len(entries)} detections on {len(results)} images)"
              + self.drawing_note())


# What the data tells the model (LightningCLI links them when both are built from a config).
LINKS = {"data.class_names": "model.class_names", "data.category_ids": "model.category_ids",
         "data.image_size": "model.image_size"}


def cli_main(args: list[str] | None = None) -> KestrelCLI:
    """Run the detection command line (``args`` as on the command line; ``sys.argv`` if None)."""
    return KestrelCLI(DetectionTask, DetectionData, monitor="val/map", links=LINKS, args=args)


if __name__ == "__main__":
    sys.exit(main(cli_main))
