"""Evaluation: COCO (faster-coco-eval, equal to pycocotools), VOC07/VOC12 AP, and DDP gathering."""

from .coco import COCO_DETECTION_KEYS, coco_detection_metrics, detections_to_coco
from .gather import gather_by_index
from .segmentation import confusion_matrix, segmentation_metrics
from .voc import voc_ap, voc_detection_metrics

__all__ = [
    "COCO_DETECTION_KEYS",
    "coco_detection_metrics",
    "confusion_matrix",
    "detections_to_coco",
    "gather_by_index",
    "segmentation_metrics",
    "voc_ap",
    "voc_detection_metrics",
]
