"""Charts of the evaluation reports, as matplotlib ``Figure`` objects.

Figures are made with ``matplotlib.figure.Figure`` itself, not ``pyplot``: no backend is chosen and no
window is opened, so importing Kestrel leaves a notebook's plotting as it was. The report writer saves
them as PNG (``Figure.savefig`` renders with Agg) and embeds them in ``report.html``.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

RECALL = np.linspace(0, 1, 101)  # COCOeval's recall thresholds


def bars(values: Mapping[str, float | None], title: str, xlabel: str) -> Figure:
    """Horizontal bars, worst at the top; classes without a value are listed as n/a."""
    names = sorted(values, key=lambda n: (values[n] is not None, values[n] or 0.0), reverse=True)
    figure = Figure(figsize=(7, 0.35 * len(names) + 1.2))
    axis = figure.subplots()
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
    figure = Figure(figsize=(11, 4.5))
    axes = figure.subplots(1, 2, sharey=True)
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
    figure = Figure(figsize=(size + 1, size))
    axis = figure.subplots()
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
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, image, title in zip(axes.ravel(), images, titles):
        axis.imshow(image.permute(1, 2, 0).numpy())
        axis.set_title(title, fontsize=8)
    figure.tight_layout()
    return figure


def read_log(path) -> list[dict[str, float]]:
    """A Lightning ``metrics.csv`` as rows of the values each holds (empty cells left out)."""
    rows = []
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            row.pop(None, None)  # cells past the header
            values = {}
            for key, value in row.items():
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):
                    continue
            rows.append(values)
    return rows


def learning_curves(paths, main_metric: str) -> Figure | None:
    """Training losses, learning rate and validation metrics of a run, read from its ``metrics.csv``:
    per step (losses faint, with each epoch's mean), and per epoch. None when the log holds no training.

    Args:
        paths: The run's ``metrics.csv`` (Lightning's CSVLogger), or several (a run and the runs that resumed
            it, in order: where two log the same value at the same step, the later one is kept).
        main_metric: The validation metric drawn first (``val/<main_metric>``).
    """
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    rows = [row for path in paths for row in read_log(path)]
    losses = sorted({k for r in rows for k in r if k.startswith("train/")}, key=lambda k: (k != "train/loss", k))
    if not losses or not any("step" in r for r in rows):
        return None
    rates = sorted(k for r in rows for k in r if k.startswith("lr-"))
    rate = rates[0] if rates else None
    wanted = [f"val/{main_metric}"] + sorted(
        {k for r in rows for k in r if k.startswith("val/") and not k.endswith(("_small", "_medium", "_large"))}
        - {f"val/{main_metric}"})
    metrics = [k for k in wanted if any(k in r for r in rows)][:6]
    figure = Figure(figsize=(15, 4.2))
    axes = figure.subplots(1, 3)

    def series(key):
        latest = {r["step"]: (r["step"], r[key], r.get("epoch")) for r in rows if key in r and "step" in r}
        return sorted(latest.values(), key=lambda p: p[0])

    for colour_index, key in enumerate(losses):
        points = series(key)
        line = axes[0].plot([p[0] for p in points], [p[1] for p in points], alpha=0.25,
                            color=f"C{colour_index}")[0]
        by_epoch: dict[float, list[tuple[float, float]]] = {}
        for step, value, epoch in points:
            by_epoch.setdefault(epoch, []).append((step, value))
        means = [(max(s for s, _ in v), sum(x for _, x in v) / len(v)) for _, v in sorted(by_epoch.items(),
                                                                                       key=lambda e: e[0] or 0)]
        axes[0].plot([m[0] for m in means], [m[1] for m in means], "o-", color=line.get_color(),
                     label=f"{key.removeprefix('train/')} (epoch mean)")
    axes[0].set_title("Training losses")
    axes[0].legend(fontsize=8)
    if rate is not None:
        points = series(rate)
        axes[1].plot([p[0] for p in points], [p[1] for p in points], color="tab:purple")
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[1].set_title("Learning rate" + (f" ({rate.removeprefix('lr-')})" if rate else ": not logged"))
    for key in metrics:
        points = series(key)
        style = "o-" if key == f"val/{main_metric}" else ".--"
        axes[2].plot([p[0] for p in points], [p[1] for p in points], style, label=key.removeprefix("val/"))
    epochs = len(series(metrics[0])) if metrics else 0
    axes[2].set_title(f"Validation, {epochs} epochs" if metrics else "Validation: not logged")
    if metrics:
        axes[2].legend(fontsize=8)
    for axis in axes:
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure
