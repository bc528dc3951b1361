"""What a benchmark writes: ``benchmark.md`` (the machine, the table, the ratios), ``benchmark.json``
(every number and sample) and ``pareto.png`` (accuracy, or GFLOPs, against batch-1 latency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from .accuracy import MAIN_METRICS
from .machine import machine_line
from .subjects import RUNTIME_NAMES
from .timing import milliseconds

TASK_NAMES = {"detect": "detection", "segment": "segmentation", "pose": "pose"}


def _cell(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(row: dict, batch: int) -> str:
    value = row.get("ratio", {}).get(str(batch))
    return "-" if value is None else f"{value:.2f}x"


def _pipeline(row: dict) -> str:
    value = row.get("pipeline_cost", {}).get("1")
    return "-" if value is None else f"{100 * value:+.0f}%"


def table(rows: list[dict], batches: list[int]) -> str:
    """The markdown table of every subject's every form."""
    header = ["model", "runtime", "input", "params (M)", "GFLOPs", "size (MB)"]
    header += [f"batch {b} ms" for b in batches] + [f"batch {batches[-1]} img/s"]
    header += [f"÷ torchvision b{b}" for b in batches] + ["pipeline b1", "accuracy", "agrees with eager"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 5) + "---|---|"]
    for row in rows:
        latency = [milliseconds(row["ms"][str(b)]) if str(b) in row["ms"] else "-" for b in batches]
        last = row["ms"].get(str(batches[-1]))
        throughput = f"{1e3 * batches[-1] / last['median']:.1f}" if last else "-"
        accuracy = row.get("accuracy")
        if accuracy:
            first, second = MAIN_METRICS[row["task"]]
            accuracy = f"{first} {_cell(accuracy.get(first))}, {second} {_cell(accuracy.get(second))}"
        cells = [row["model"], RUNTIME_NAMES[row["runtime"]], "x".join(map(str, row["input_size"])),
                 f"{row['params']:.2f}", f"{row['gflops']:.2f}", _cell(row.get("size_mb"), 2), *latency, throughput,
                 *(_ratio(row, b) for b in batches), _pipeline(row), accuracy or "-", row.get("agreement") or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    batches = result["batches"]
    lines = [
        "# Kestrel benchmark", "",
        f"Machine: {machine_line(result['machine'])}.", "",
        f"Latency: median (25th-75th percentile) of {result['repeats']} calls per batch size after warm-up, "
        f"the models taking turns; input uint8 {result['input_hw'][0]}x{result['input_hw'][1]} images "
        "(pose: crops at the model's input size), pre- and post-processing inside the call. "
        "÷ torchvision: latency over torchvision's at the same batch size — for detection torchvision's "
        "pipeline on the same weights, for segmentation its deeplabv3_mobilenet_v3_large (eager) on images of "
        "the segmenter's input size; pipeline b1: a file's batch-1 latency over its network alone in the same "
        "runtime (the network-only row: backbone and head on images resized beforehand), less one; "
        "phone files (ExecuTorch, LiteRT) run batch 1 only; "
        "accuracy: the task's `test` on the config's data with that form as `--ckpt_path`.", "",
        table(result["rows"], batches), "",
    ]
    if result.get("notes"):
        lines += ["Notes:", ""] + [f"- {note}" for note in result["notes"]] + [""]
    if result.get("plot"):
        lines += [f"![pareto]({result['plot']})", ""]
    path.write_text("\n".join(lines))


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=2))


def pareto_plot(path: Path, rows: list[dict]) -> bool:
    """Per task, accuracy (or, without any, GFLOPs) against batch-1 latency; the best trade-offs joined.
    Returns whether anything was plotted."""
    tasks = [t for t in TASK_NAMES if any(r["task"] == t and "1" in r["ms"] for r in rows)]
    if not tasks:
        return False
    figure = Figure(figsize=(6.5 * len(tasks), 5))
    axes = figure.subplots(1, len(tasks), squeeze=False)
    markers = dict(zip(RUNTIME_NAMES, "os^vDPXh*<>p8d"))
    for axis, task in zip(axes[0], tasks):
        timed = [r for r in rows if r["task"] == task and "1" in r["ms"]]
        scored = [r for r in timed if r.get("accuracy")]
        metric = MAIN_METRICS[task][0]
        use_accuracy = bool(scored)
        points = scored if use_accuracy else timed
        models = sorted({r["model"] for r in points})
        colours = {m: matplotlib.colormaps["tab10"](i % 10) for i, m in enumerate(models)}
        for row in points:
            x = row["ms"]["1"]["median"]
            y = row["accuracy"][metric] if use_accuracy else row["gflops"]
            axis.scatter(x, y, marker=markers[row["runtime"]], color=colours[row["model"]], s=50)
        for model in models:
            axis.scatter([], [], color=colours[model], label=model)
        for runtime in sorted({r["runtime"] for r in points}, key=list(RUNTIME_NAMES).index):
            axis.scatter([], [], marker=markers[runtime], color="grey", label=RUNTIME_NAMES[runtime])
        if use_accuracy:  # the frontier: no other point is both faster and more accurate
            ordered = sorted(points, key=lambda r: r["ms"]["1"]["median"])
            frontier, best = [], float("-inf")
            for row in ordered:
                if row["accuracy"][metric] is not None and row["accuracy"][metric] > best:
                    frontier.append(row)
                    best = row["accuracy"][metric]
            axis.plot([r["ms"]["1"]["median"] for r in frontier], [r["accuracy"][metric] for r in frontier],
                      color="grey", linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(ScalarFormatter())
        axis.tick_params(which="minor", labelsize=7)
        axis.set_xlabel("batch-1 latency (ms, log scale)")
        axis.set_ylabel(metric if use_accuracy else "GFLOPs")
        axis.set_title(f"{TASK_NAMES[task]}: {metric if use_accuracy else 'GFLOPs'} against latency")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True
