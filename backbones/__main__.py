"""``python -m backbones``: a table of every registered backbone, its size, cost and levels;
``python -m backbones pick``: the ones that fit a latency budget with a task's head.

This file is a program, not part of the library: ``pick`` runs the benchmark's picker
(``tasks.benchmark.pick``), which builds each task's head on every backbone. ``import backbones`` imports
neither ``heads`` nor ``tasks``."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import Pyramid, build_backbone, list_backbones


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
    parser.add_argument("names", nargs="*", help="backbones to show (default: every registered one); "
                        "timm:<model> works too")
    parser.add_argument("--size", type=int, default=224, help="square input size (default 224)")
    parser.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    parser.add_argument("--feature-location", default="block", choices=("block", "expansion"))
    parser.add_argument("--time", action="store_true",
                        help=f"add the median CPU latency of a batch-1 forward ({torch.get_num_threads()} threads)")
    args = parser.parse_args(argv)

    names = args.names or list_backbones()
    print(f"Backbones at {args.size}x{args.size}, output stride {args.output_stride}, "
          f"{args.feature_location} taps. Levels are name:channels/stride. GMACs = GFLOPs / 2.\n")
    timed = " ms (batch 1) |" if args.time else ""
    print("| backbone | params (M) | GFLOPs | GMACs |" + timed + " levels |")
    print("|---|---:|---:|---:|" + ("---:|" if args.time else "") + "---|")
    for name in names:
        try:
            model = build_backbone(
                name, output_stride=args.output_stride, feature_location=args.feature_location
            )
        except (ValueError, TypeError, FileNotFoundError) as err:
            print(f"| {name} | - | - | - |" + (" - |" if args.time else "") + f" cannot build: {err} |")
            continue
        row = describe(model, args.size)
        ms = f" {latency_ms(model, args.size):.1f} |" if args.time else ""
        print(f"| {name} | {row['params']:.2f} | {row['gflops']:.3f} | {row['gflops'] / 2:.3f} |{ms} {row['levels']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
