"""What every evaluator shares: a ``torchmetrics.Metric`` over a split's ground truth, and what its report shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


@dataclass
class Sample:
    """One image of a report's sample grid: its file, the ground truth and the prediction (per task: boxes and
    labels; a label map; keypoints of the people in it)."""

    file: Path
    truth: dict[str, Any]
    prediction: dict[str, Any]


@dataclass
class Report:
    """What a report holds besides the run's details, as numbers; ``tasks.reporting`` draws and writes it.

    Attributes:
        task: ``detect``, ``segment`` or ``pose`` (how samples are drawn).
        title: The report's first heading.
        metrics: What ``metrics.json`` holds (:meth:`Evaluator.compute`).
        headline: Keys of ``metrics`` shown first.
        table: Per class (or keypoint) name, ``{column: value}``; the first column sorts it, worst first.
        columns: The table's columns.
        row_label: What a row of the table is (class, keypoint).
        notes: How to read the numbers.
        counts: What was evaluated (images, objects, ...).
        data: Which data, for the run's details.
        bars: Bar charts by file stem: ``(values by name, title, axis label)``.
        precision: COCOeval's precision array (detection), for precision/recall curves.
        confusion: The summed confusion matrix (segmentation).
        label_names: Names of labels 0..K (segmentation: background first), or of 1..K (detection).
        samples: A few images with their ground truth and prediction.
        sample_caption: What the prediction panels show.
        skeleton: The keypoint pairs drawn as limbs (pose, 0-based).
    """

    task: str
    title: str
    metrics: dict[str, Any]
    headline: list[str]
    table: dict[str, dict[str, float | None]]
    columns: list[str]
    row_label: str = "class"
    notes: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    data: str = ""
    bars: dict[str, tuple[dict[str, float | None], str, str]] = field(default_factory=dict)
    precision: np.ndarray | None = None
    confusion: np.ndarray | None = None
    label_names: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    sample_caption: str = "prediction"
    skeleton: list[tuple[int, int]] = field(default_factory=list)


class Evaluator(Metric):
    """Scores a network's decoded outputs against the ground truth of one split.

    ``update(outputs, targets)`` takes a batch's outputs (one dict per image, as the network and every
    exported file return them) and the batch's targets (one dict per image, as the data set gives them:
    ``image_id`` and the geometry that maps outputs back to the image); ``compute()`` returns the numbers
    ``metrics.json`` holds, equal on every process of a distributed run (torchmetrics gathers the states;
    an evaluation sampler that repeats no image makes them equal to one process's); :meth:`report` what a
    report shows of the last ``compute()``. Evaluators are built by the data module that owns the ground
    truth (``datamodule.evaluator(stage)``) and score a checkpoint under ``test``, an exported file, and a
    benchmark row alike (:func:`tasks.evaluation.evaluate`).
    """

    full_state_update = False
    higher_is_better = True
    main_metric: str = ""

    def __init__(self, description: str):
        super().__init__()
        self.description = description
        self._details: dict[str, Any] | None = None

    def report(self) -> Report:
        """What a report shows of the last :meth:`compute` (call it after ``compute``)."""
        raise NotImplementedError

    def _computed_details(self) -> dict[str, Any]:
        if self._details is None:
            raise RuntimeError(f"{type(self).__name__}.report() needs compute() first")
        return self._details

    def reset(self) -> None:
        super().reset()
        self._details = None


def image_position(table: dict[Any, int], image_id: Any, description: str) -> int:
    """The position of ``image_id`` in an evaluator's ground truth; a ``ValueError`` for an unknown id."""
    try:
        return table[image_id]
    except KeyError:
        raise ValueError(f"image id {image_id!r} is not in the ground truth of {description}") from None


def cat(state: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """A list state (or a tensor, once gathered) as one tensor; ``empty`` when nothing was added."""
    if isinstance(state, torch.Tensor):
        return state
    return dim_zero_cat(state) if state else empty


def unique_positions(state: list[torch.Tensor], description: str) -> list[int]:
    """The positions of the images evaluated; a ``ValueError`` if one was evaluated twice (a distributed sampler
    that pads the split with repeated images would count them twice)."""
    positions = cat(state, torch.zeros(0, dtype=torch.long)).tolist()
    if len(set(positions)) != len(positions):
        raise ValueError(f"{description}: some images were evaluated more than once; evaluate each image once (a "
                         "DistributedSampler pads a split with repeated images: use the data module's loaders, "
                         "whose evaluation sampler repeats none)")
    return positions
