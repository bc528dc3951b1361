"""A report's figures, from what its evaluator found: bar charts, precision/recall curves, the confusion
matrix, the learning curves, and ground truth beside predictions on a few images."""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from ..data.images import read_image
from ..evaluation import Report
from . import plots
from .drawing import DRAW_SCORE, draw_boxes, draw_detections, draw_labels, draw_people, draw_poses


def report_figures(report: Report) -> dict[str, Figure]:
    """The figures of a report, by file stem."""
    figures = {name: plots.bars(values, title, label) for name, (values, title, label) in report.bars.items()}
    if report.precision is not None:
        figures["precision_recall"] = plots.precision_recall(report.precision, report.label_names)
    if report.confusion is not None:
        figures["confusion_matrix"] = plots.confusion(report.confusion, report.label_names)
    if report.samples:
        figures["samples"] = sample_grid(report)
    return figures


def sample_grid(report: Report) -> Figure:
    """Ground truth beside the prediction on each of the report's sample images (the report, TensorBoard)."""
    panels, titles = [], []
    for sample in report.samples:
        image = torch.from_numpy(read_image(sample.file)).permute(2, 0, 1)
        truth, found = sample.truth, sample.prediction
        if report.task == "detect":
            panels += [draw_boxes(image, truth["boxes"], truth["labels"], report.label_names),
                       draw_detections(image, found["boxes"], found["scores"], found["labels"], report.label_names)]
            caption = f"detections (score >= {DRAW_SCORE})"
        elif report.task == "segment":
            panels += [draw_labels(image, truth["labels"], report.label_names),
                       draw_labels(image, found["labels"], report.label_names)]
            caption = f"{sample.file.name}: prediction"
        else:
            panels += [draw_poses(image, truth["keypoints"], truth["visible"], report.skeleton, colours=(0, 255, 0)),
                       draw_people(image, found["keypoints"], found["visible"], found["box_scores"], report.skeleton,
                                   colours=(255, 0, 0))]
            caption = report.sample_caption
        titles += [f"{sample.file.name}: ground truth", caption]
    return plots.grid(panels, titles)
