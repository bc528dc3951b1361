"""Evaluation reports: ``test`` of every task writes into the run's ``report/`` folder ``metrics.json`` (the
numbers), ``report.md`` (headline, per-class table worst first, the run's details, notes, plots), ``*.png``
plots and ``report.html``, the same with the plots embedded, one file to share.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from matplotlib.figure import Figure
from pytorch_lightning.callbacks import Callback

from ..provenance import kestrel_version
from . import plots
from .figures import report_figures
from .runs import fit_time, training_logs


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "---:") -> list[str]:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|---|" + f"{align}|" * (len(header) - 1)]
    return lines + ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]


def write_report(
    log_dir: str | Path,
    title: str,
    metrics: Mapping[str, Any],
    headline: list[str],
    per_class: Mapping[str, Mapping[str, Any]],
    per_class_columns: list[str],
    run: Mapping[str, Any],
    notes: Sequence[str] = (),
    figures: Mapping[str, Figure] | None = None,
    per_class_label: str = "class",
) -> Path:
    """Write ``metrics.json``, ``report.md``, the plots and ``report.html``; return the report folder.

    Args:
        log_dir: The run's log folder.
        title: First heading.
        metrics: The numbers, written as they are to ``metrics.json``; None means undefined.
        headline: Keys of ``metrics`` shown first.
        per_class: Per class name, {column: value}.
        per_class_columns: Columns of the per-class table, the first one sorting it (worst first).
        run: What produced the numbers (task, backbone, data, checkpoint, ...).
        notes: Lines explaining how to read the numbers.
        figures: Plots by file stem (``"per_class_ap"`` -> ``per_class_ap.png``).
        per_class_label: What a row of the per-class table is (class, keypoint, ...).
    """
    folder = Path(log_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    head_rows = [(key, metrics.get(key)) for key in headline]
    class_rows = []
    if per_class:
        key = per_class_columns[0]
        order = sorted(per_class, key=lambda n: (per_class[n].get(key) is not None, per_class[n].get(key) or 0.0))
        class_rows = [(name, *(per_class[name].get(c) for c in per_class_columns)) for name in order]
    run_rows = list(run.items())
    images = {name: _png(figure) for name, figure in (figures or {}).items()}
    for name, data in images.items():
        (folder / f"{name}.png").write_bytes(data)

    lines = [f"# {title}", ""] + markdown_table(["metric", "value"], head_rows)
    if class_rows:
        lines += ["", f"## Per {per_class_label} (worst {per_class_columns[0]} first)", ""]
        lines += markdown_table([per_class_label, *per_class_columns], class_rows)
    lines += ["", "## Run", ""] + markdown_table(["", ""], run_rows, align="---")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    if images:
        lines += ["", "## Plots", ""] + [f"![{name}]({name}.png)" for name in images]
    (folder / "report.md").write_text("\n".join(lines) + "\n")

    parts = [f"<h1>{html.escape(title)}</h1>", _html_table(["metric", "value"], head_rows)]
    if class_rows:
        parts += [f"<h2>Per {per_class_label} (worst {html.escape(per_class_columns[0])} first)</h2>",
                  _html_table([per_class_label, *per_class_columns], class_rows)]
    parts += ["<h2>Run</h2>", _html_table(["", ""], run_rows)]
    if notes:
        parts += ["<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>"]
    for name, data in images.items():
        source = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        parts.append(f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" src="{source}">')
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
             "img{max-width:100%}")
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")
    (folder / "report.html").write_text(page)
    return folder


class ReportWriter(Callback):
    """Writes the evaluation report when ``test`` ends: the numbers of the task's evaluator, its figures, the
    learning curves of the training behind the weights, and the run's details (model, data, weights or
    exported file and its runtime, code version, time) into the run's ``report/`` folder; prints where."""

    def __init__(self) -> None:
        self._started = time.perf_counter()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective in a distributed run: every process asks
        if not trainer.is_global_zero:
            return
        seconds = time.perf_counter() - self._started
        report = pl_module.evaluator.report()
        figures = report_figures(report)
        logs = training_logs(trainer, pl_module.exported.metadata.get("checkpoint") if pl_module.exported else None)
        curves = plots.learning_curves(logs, pl_module.main_metric) if logs else None
        if curves is not None:
            figures["learning_curves"] = curves
        run = {**pl_module.model_details(), "data": report.data, **report.counts, **pl_module.weights_details(),
               "Kestrel": kestrel_version(), "training (fit wall time)": fit_time(logs) or "-",
               "evaluation wall time (s)": f"{seconds:.1f}"}
        folder = write_report(log_dir or trainer.default_root_dir, report.title, report.metrics, report.headline,
                              report.table, report.columns, run, report.notes, figures, report.row_label)
        print(f"Evaluation report: {folder / 'report.md'} (numbers in {folder / 'metrics.json'})")
