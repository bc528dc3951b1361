"""Evaluation reports: ``report/metrics.json`` and ``report/report.md`` in a run's log folder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def write_report(
    log_dir: str | Path,
    title: str,
    metrics: Mapping[str, Any],
    headline: list[str],
    per_class: Mapping[str, Mapping[str, Any]],
    per_class_columns: list[str],
    run: Mapping[str, Any],
    notes: list[str] = (),
) -> Path:
    """Write ``metrics.json`` and a markdown summary; return the report folder.

    Args:
        log_dir: The run's log folder.
        title: First heading of the markdown.
        metrics: The numbers, written as they are to ``metrics.json``; None means undefined.
        headline: Keys of ``metrics`` shown first.
        per_class: Per class name, {column: value}.
        per_class_columns: Columns of the per-class table, the first one sorting it (worst first).
        run: What produced the numbers (task, backbone, data, checkpoint, ...).
        notes: Lines explaining how to read the numbers.
    """
    folder = Path(log_dir) / "report"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = [f"# {title}", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {key} | {_fmt(metrics.get(key))} |" for key in headline]
    if per_class:
        key = per_class_columns[0]
        order = sorted(per_class, key=lambda n: (per_class[n].get(key) is not None, per_class[n].get(key) or 0.0))
        lines += ["", f"## Per class (worst {key} first)", "",
                  "| class | " + " | ".join(per_class_columns) + " |",
                  "|---|" + "---:|" * len(per_class_columns)]
        lines += [f"| {name} | " + " | ".join(_fmt(per_class[name].get(c)) for c in per_class_columns) + " |"
                  for name in order]
    lines += ["", "## Run", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in run.items()]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    return folder
