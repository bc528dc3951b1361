"""Evaluation: one scoring path for a checkpoint under ``test``, an exported file and a benchmark row.

Each task's evaluator is a ``torchmetrics.Metric`` built by the data module that owns the ground truth
(``datamodule.evaluator(stage)``): ``update(outputs, targets)`` per batch, ``compute()`` the numbers of
``metrics.json`` (COCO numbers exactly pycocotools' COCOeval's, VOC07/VOC12 AP, OKS AP, mIoU), ``report()``
what a report shows. :func:`evaluate` runs any network — a task's module or an exported file in its
runtime — over a split and returns the evaluator's numbers, no Trainer needed.
"""

from ._base import Evaluator, Report, Sample
from .detection import DetectionEvaluator
from .evaluate import evaluate
from .pose import PoseEvaluator
from .segmentation import VOID, SegmentationEvaluator

__all__ = ["VOID", "DetectionEvaluator", "Evaluator", "PoseEvaluator", "Report", "Sample", "SegmentationEvaluator",
           "evaluate"]
