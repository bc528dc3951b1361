"""``python -m backbones``: a table of every registered backbone, its size, cost and levels;
``python -m backbones pick``: the ones that fit a latency budget with a task's head;
``python -m backbones --markdown PAGE``: the table also written as a page, with the command, machine and date.

This file is a program, not part of the library: ``pick`` runs the benchmark's picker
(``tasks.benchmark.pick``), which builds each task's head on every backbone. ``import backbones`` imports
neither ``heads`` nor ``tasks``."""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import Pyramid, __version__, build_backbone, list_backbones


def describe(model: Pyramid, size: int) -> dict[str, object]:
    """Parameters, GFLOPs of one forward at ``size x size`` (torch's FLOP counter) and the levels."""
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    levels = " ".join(f"{lv.name}:{lv.channels}/{lv.stride}" for lv in model.feature_info)
    return {"params": params / 1e6, "gflops": counter.get_total_flops() / 1e9, "levels": levels}


def latency_ms(model: Pyramid, size: int, batch: int = 1, repeats: int = 20) -> float:
    """Median wall time of one eval forward on this machine's CPU, after warm-up."""
    x = torch.randn(batch, 3, size, size)
    model.eval()
    with torch.inference_mode():
        for _ in range(5):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pick"]:
        from tasks.benchmark.pick import main as pick

        return pick(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m backbones",
        description="Table of the registered backbones: parameters, GFLOPs at --size (torch's FLOP "
        "counter, which counts a multiply-add as 2 FLOPs) and channels/stride per level.",
    )
    parser.add_argument("--version", action="version", version=f"kestrel-vision {__version__}")
    parser.add_argument("names", nargs="*", help="backbones to show (default: every registered one); "
                        "timm:<model> works too")
    parser.add_argument("--size", type=int, default=224, help="square input size (default 224)")
    parser.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    parser.add_argument("--feature-location", default="block", choices=("block", "expansion"))
    parser.add_argument("--time", action="store_true",
                        help=f"add the median CPU latency of a batch-1 forward ({torch.get_num_threads()} threads)")
    parser.add_argument("--markdown", metavar="PAGE",
                        help="also write the table to PAGE, a markdown page with the command, machine and date")
    args = parser.parse_args(argv)

    names = args.names or list_backbones()
    lines = [f"Backbones at {args.size}x{args.size}, output stride {args.output_stride}, "
             f"{args.feature_location} taps. Levels are name:channels/stride. GMACs = GFLOPs / 2.", ""]
    timed = " ms (batch 1) |" if args.time else ""
    lines += ["| backbone | params (M) | GFLOPs | GMACs |" + timed + " levels |",
              "|---|---:|---:|---:|" + ("---:|" if args.time else "") + "---|"]
    print("\n".join(lines))
    # Only the options asked for, as ``Backbone`` passes them, so that a plugin need not take them all.
    options = {k: v for k, v in [("output_stride", args.output_stride), ("feature_location", args.feature_location)]
               if v != parser.get_default(k)}
    for name in names:
        try:
            model = build_backbone(name, **options)
        except (ValueError, TypeError, FileNotFoundError) as err:
            lines.append(f"| {name} | - | - | - |" + (" - |" if args.time else "") + f" cannot build: {err} |")
            print(lines[-1])
            continue
        row = describe(model, args.size)
        ms = f" {latency_ms(model, args.size):.1f} |" if args.time else ""
        lines.append(f"| {name} | {row['params']:.2f} | {row['gflops']:.3f} | {row['gflops'] / 2:.3f} |{ms} "
                     f"{row['levels']} |")
        print(lines[-1])
    if args.markdown:
        write_page(Path(args.markdown), "python -m backbones " + shlex.join(argv), lines)
        print(f"\nWritten to {args.markdown}")
    return 0


def write_page(path: Path, command: str, lines: list[str]) -> None:
    """The table as a block of a markdown page (``tasks.benchmark.page``), with the command, the machine and the
    date."""
    # A program may use the benchmark's page writer and machine description; the library (``import backbones``)
    # may not.
    from tasks.benchmark.machine import describe_machine, machine_line
    from tasks.benchmark.page import write_page as write_block

    text = "\n".join([
        f"Machine: {machine_line(describe_machine(torch.get_num_threads()))}.",
        "",
        *lines,
        "",
        "Parameters and cost are the pyramid's, without the classifier. torch's FLOP counter counts a multiply-add "
        "as two FLOPs; the \"FLOPs\" papers and torchvision give for these models are multiply-adds, the GMACs "
        "column. Both are counts: they do not depend on the machine, latency does.",
    ])
    write_block(path, command, text, title="Backbones: size, cost and levels")

if __name__ == "__main__":
    sys.exit(main())
