"""``python -m tasks.benchmark --grid``: the two knobs the MobileNet papers give — width multiplier
(alpha) and input resolution (rho) — for SSDLite on MobileNetV2 and MobileNetV3-Large, as one table
and one plot.

Every cell is SSDLite with 80 classes (the COCO configs' head) on the backbone at that width and
input size, timed from uint8 image to the head's outputs as the backbone picker (``python -m backbones pick``) times it
(box decoding and NMS left out: on untrained weights their cost says nothing about a trained
detector's, and it does not depend on the backbone), at batch 1 and 8, in eager PyTorch (as Kestrel
runs it for inference) or ONNX Runtime, every cell taking turns with the others
(``tasks.benchmark.timing``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from .machine import describe_machine, machine_line
from .pick import build, runner
from .report import write_json
from .subjects import count_gflops
from .timing import interleaved, summary, with_threads

WIDTHS = {"mobilenet_v2": (0.35, 0.5, 0.75, 1.0, 1.4), "mobilenet_v3_large": (0.5, 0.75, 1.0, 1.25)}
SIZES = (128, 192, 256, 320)


@with_threads
def grid(widths: dict[str, Sequence[float]] = WIDTHS, sizes: Sequence[int] = SIZES, runtime: str = "onnx",
         batches: Sequence[int] = (1, 8), repeats: int = 10, threads: int = 2, out: str | Path = "runs/benchmark",
         say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure every (backbone, width, size); write ``grid.md``, ``grid.json`` and ``grid.png`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(threads)
    say(f"Machine: {machine_line(machine)}")
    cells, models, inputs = [], {}, {}
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        for backbone, alphas in widths.items():
            for alpha in alphas:
                for size in sizes:
                    say(f"  {backbone} x{alpha} at {size} px: building" + (", exporting" if runtime == "onnx" else ""))
                    network, input_size = build("detect", backbone, size, width_mult=alpha)
                    network.eval()
                    key = f"{backbone} x{alpha} {size}"
                    folder = Path(scratch) / key.replace(" ", "_")
                    folder.mkdir()
                    models[key] = runner("detect", network, input_size, runtime, folder, spinning=False)
                    inputs[key] = {b: torch.randint(0, 256, (b, 3, *input_size), dtype=torch.uint8, generator=generator)
                                   for b in batches}
                    cells.append({"backbone": backbone, "width": alpha, "size": size, "key": key,
                                  "params": sum(p.numel() for p in network.parameters()) / 1e6,
                                  "gflops": count_gflops(network, inputs[key][batches[0]][:1])})
        say(f"timing {len(cells)} networks, taking turns")
        times = interleaved(models, inputs, repeats, progress=lambda text: say(f"  {text}"))
    rows = [{k: v for k, v in cell.items() if k != "key"} | {"ms": {str(b): summary(times[cell["key"]][b])["median"]
                                                                   for b in batches}} for cell in cells]
    result = {"machine": machine, "runtime": runtime, "batches": list(batches), "repeats": repeats, "rows": rows}
    write_json(out / "grid.json", result)
    _plot(out / "grid.png", rows, batches[0])
    text = _markdown(result)
    (out / "grid.md").write_text(text)
    say("\n" + text)
    say(f"Wrote {out / 'grid.md'}, {out / 'grid.json'}, {out / 'grid.png'}")
    return result


def _markdown(result: dict[str, Any]) -> str:
    batches = result["batches"]
    lines = ["# SSDLite: width multiplier x input resolution", "",
             f"Machine: {machine_line(result['machine'])}.", "",
             f"SSDLite (80 classes) to the head's outputs, {result['runtime']}, median of {result['repeats']} "
             "calls after warm-up; uint8 input, scaling and resizing inside.", "",
             "| backbone | width | input | params (M) | GFLOPs | "
             + " | ".join(f"batch {b} ms" for b in batches) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(batches)]
    for row in result["rows"]:
        times = " | ".join(f"{row['ms'][str(b)]:.1f}" for b in batches)
        lines.append(f"| {row['backbone']} | {row['width']:g} | {row['size']} | {row['params']:.2f} | "
                     f"{row['gflops']:.2f} | {times} |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: list[dict], batch: int) -> None:
    """Latency against GFLOPs, one line per (backbone, width) through its input sizes."""
    figure = Figure(figsize=(8, 5.5))
    axis = figure.subplots()
    lines: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        lines.setdefault((row["backbone"], row["width"]), []).append(row)
    styles = {"mobilenet_v2": "-", "mobilenet_v3_large": "--"}
    for i, ((backbone, width), cells) in enumerate(lines.items()):
        cells = sorted(cells, key=lambda r: r["size"])
        axis.plot([c["gflops"] for c in cells], [c["ms"][str(batch)] for c in cells], styles.get(backbone, ":"),
                  marker="o", color=matplotlib.colormaps["tab10"](i % 10), label=f"{backbone} x{width:g}")
        for c in cells:
            axis.annotate(str(c["size"]), (c["gflops"], c["ms"][str(batch)]), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.xaxis.set_major_formatter(ScalarFormatter())
    axis.yaxis.set_major_formatter(ScalarFormatter())
    axis.yaxis.set_minor_formatter(ScalarFormatter())
    axis.tick_params(which="minor", labelsize=7)
    axis.set_xlabel("GFLOPs (one image; labels: input size; log scale)")
    axis.set_ylabel(f"batch-{batch} latency (ms, log scale)")
    axis.set_title("SSDLite: width multiplier (alpha) x resolution (rho)")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
