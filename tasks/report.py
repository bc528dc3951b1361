"""Evaluation reports, and comparing runs: ``python -m tasks.report compare RUN_A RUN_B [...]``.

``test`` of every task writes into the run's ``report/``: ``metrics.json`` (the numbers),
``report.md`` (headline, per-class table worst first, the run's details, notes, plots),
``*.png`` plots and ``report.html``, the same with the plots embedded, one file to share.

``compare`` prints a markdown table of the headline and per-class numbers of several runs side by
side, with each run's difference from the first. A run is a ``metrics.json``, a ``report/`` folder,
a ``version_N`` folder, or a ``trainer.default_root_dir`` (its newest report).
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def duration(seconds: float) -> str:
    """``9 min 12 s``, ``35 s``, ``1 h 2 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def _html_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "---:") -> list[str]:
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

    lines = [f"# {title}", ""] + _md_table(["metric", "value"], head_rows)
    if class_rows:
        lines += ["", f"## Per {per_class_label} (worst {per_class_columns[0]} first)", ""]
        lines += _md_table([per_class_label, *per_class_columns], class_rows)
    lines += ["", "## Run", ""] + _md_table(["", ""], run_rows, align="---")
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


# ----------------------------------------------------------------------------- compare
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
        lines += ["", f"## {title}", ""] + _md_table(header, rows)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.report", description="Kestrel evaluation reports.")
    commands = parser.add_subparsers(dest="command", required=True)
    compare_parser = commands.add_parser("compare", help="side-by-side numbers of runs, with differences")
    compare_parser.add_argument("runs", nargs="+", help="metrics.json, report/ or run folders; the first is the base")
    args = parser.parse_args(argv)
    try:
        print(compare(args.runs), end="")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
