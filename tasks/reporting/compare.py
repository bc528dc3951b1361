"""Several runs' numbers side by side: ``python -m tasks.reporting compare RUN_A RUN_B [...]``.

A markdown table of the headline and per-class numbers of the runs, with each run's difference from the
first. A run is a ``metrics.json``, a ``report/`` folder, a ``version_N`` folder, or a
``trainer.default_root_dir`` (its newest report).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .report import markdown_table


def find_metrics(run: str | Path) -> Path:
    """The ``metrics.json`` a run path means (see the module docstring)."""
    path = Path(run)
    if path.is_file():
        return path
    for candidate in (path / "metrics.json", path / "report" / "metrics.json"):
        if candidate.is_file():
            return candidate
    found = sorted(path.glob("**/report/metrics.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{str(path)!r} holds no report/metrics.json: run `test` first")
    return found[-1]


def _numbers(metrics: Mapping[str, Any]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Headline numbers, and per-class ones as ``"name column"`` (``per_class``, ``per_class_iou``, ...)."""
    headline, per_class = {}, {}
    for key, value in metrics.items():
        if isinstance(value, (int, float)) or value is None:
            headline[key] = value
        elif isinstance(value, Mapping):
            for name, entry in value.items():
                if isinstance(entry, Mapping):
                    per_class.update({f"{name} {column}": v for column, v in entry.items()})
                else:
                    per_class[f"{name} {key.removeprefix('per_class_')}"] = entry
    return headline, per_class


def compare(runs: Sequence[str | Path]) -> str:
    """A markdown table of several runs' numbers, with each run's difference from the first."""
    files = [find_metrics(r) for r in runs]
    loaded = [_numbers(json.loads(f.read_text())) for f in files]
    labels = [chr(ord("A") + i) if i < 26 else str(i) for i in range(len(files))]
    lines = ["Runs:", ""] + [f"- {label}: {f}" for label, f in zip(labels, files)]
    header = ["metric", *labels, *(f"{label} - A" for label in labels[1:])]
    for title, index in (("Headline", 0), ("Per class", 1)):
        keys = list(dict.fromkeys(k for numbers in loaded for k in numbers[index]))
        if not keys:
            continue
        rows = []
        for key in keys:
            values = [numbers[index].get(key) for numbers in loaded]
            base = values[0]
            diffs = [None if v is None or base is None else f"{v - base:+.4f}" for v in values[1:]]
            rows.append([key, *values, *diffs])
        lines += ["", f"## {title}", ""] + markdown_table(header, rows)
    return "\n".join(lines) + "\n"
