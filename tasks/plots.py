"""Figures of the evaluation reports: matplotlib charts and torchvision's drawing utilities.

Every function returns a matplotlib ``Figure`` (Agg backend: no display needed); the report writer
saves them as PNG and embeds them in ``report.html``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

RECALL = np.linspace(0, 1, 101)  # COCOeval's recall thresholds


def bars(values: Mapping[str, float | None], title: str, xlabel: str) -> Figure:
    """Horizontal bars, worst at the top; classes without a value are listed as n/a."""
    names = sorted(values, key=lambda n: (values[n] is not None, values[n] or 0.0), reverse=True)
    figure, axis = plt.subplots(figsize=(7, 0.35 * len(names) + 1.2))
    numbers = [values[n] or 0.0 for n in names]
    axis.barh(range(len(names)), numbers, color="tab:blue")
    axis.set_yticks(range(len(names)), [n if values[n] is not None else f"{n} (n/a)" for n in names])
    for i, v in enumerate(numbers):
        axis.text(min(v, 1.0) + 0.01, i, f"{v:.3f}", va="center", fontsize=8)
    axis.set_xlim(0, 1.1)
    axis.set_xlabel(xlabel)
    axis.set_title(title)
    figure.tight_layout()
    return figure


def precision_recall(precision: np.ndarray, class_names: Sequence[str]) -> Figure:
    """Per-class precision/recall curves at IoU 0.5 and averaged over IoU 0.5:0.95.

    Args:
        precision: COCOeval's ``eval["precision"]`` ``[IoU, recall, class, area, max dets]``; -1 is
            "no ground truth".
    """
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    at_all = precision[:, :, :, 0, -1]  # area all, most detections
    for k, name in enumerate(class_names):
        curve = at_all[:, :, k]
        if (curve[0] < 0).all():
            continue
        axes[0].plot(RECALL, np.clip(curve[0], 0, None), label=name)
        axes[1].plot(RECALL, np.where(curve < 0, np.nan, curve).mean(0), label=name)
    for axis, title in zip(axes, ("IoU 0.5", "mean over IoU 0.5:0.95")):
        axis.set_xlabel("recall")
        axis.set_title(f"Precision / recall, {title}")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("precision")
    axes[1].legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return figure


def confusion(matrix: np.ndarray, names: Sequence[str]) -> Figure:
    """The confusion matrix normalized per true class (rows sum to 1), void pixels left out."""
    matrix = np.asarray(matrix, np.float64)
    totals = matrix.sum(1, keepdims=True)
    normalized = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    size = 0.5 * len(names) + 2
    figure, axis = plt.subplots(figsize=(size + 1, size))
    image = axis.imshow(normalized, vmin=0, vmax=1, cmap="Blues")
    axis.set_xticks(range(len(names)), names, rotation=60, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(names) <= 25:
        for i in range(len(names)):
            for j in range(len(names)):
                if normalized[i, j] >= 0.005:
                    axis.text(j, i, f"{normalized[i, j]:.2f}", ha="center", va="center", fontsize=7,
                              color="white" if normalized[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=axis, fraction=0.046)
    axis.set_title("Confusion matrix (per true class)")
    figure.tight_layout()
    return figure


def grid(images: Sequence[torch.Tensor], titles: Sequence[str], columns: int = 4) -> Figure:
    """Images (``(3, H, W)`` uint8) in a grid with titles."""
    rows = max(1, -(-len(images) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, title in zip(axes.ravel(), images, titles):
        axis.imshow(image.permute(1, 2, 0).numpy())
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure
