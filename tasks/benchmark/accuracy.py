"""Accuracy of each form of a trained network, by the task's own evaluator on the config's data — the split,
the evaluator and the numbers ``test`` gives a user (``tasks.evaluation.evaluate``) — and how closely each
form's outputs follow PyTorch's on the timing images."""

from __future__ import annotations

from typing import Any

from ..deploy.agreement import agreement
from ..deploy.runtime import Network
from ..evaluation import evaluate

# the headline number of each task's report, and a second one worth a column
MAIN_METRICS = {"detect": ("map", "map_50"), "segment": ("miou", "pixel_accuracy"), "pose": ("ap", "ap_50")}


def score(network: Network, datamodule: Any, options: dict[str, Any]) -> dict[str, Any]:
    """The numbers ``test`` writes into ``metrics.json`` for ``network`` (any form of it) on the data's test split,
    with the task's evaluation ``options``."""
    metrics, _ = evaluate(network, datamodule, "test", **options)
    return metrics


def agreement_text(task: str, stats: dict[str, float]) -> str:
    """A table cell: how one form's outputs compare with PyTorch eager's on the same images."""
    if task == "segment":
        return f"{100 * stats['pixel_agreement']:.2f}% of pixels"
    if task == "pose":
        return f"keypoints within {stats['max_keypoint_diff']:.2g} px"
    matched = stats["detections"] - stats["unmatched"]
    return f"{matched} of {stats['detections']} detections matched ({stats['candidate_detections']} found)"


def compare(task: str, reference: list[dict], candidate: list[dict], int8: bool) -> dict[str, float]:
    """:func:`tasks.deploy.agreement.agreement` with the tolerance export's own check uses (1 px for INT8)."""
    return agreement(task, reference, candidate, box_tolerance=1.0 if int8 else 1e-2)
