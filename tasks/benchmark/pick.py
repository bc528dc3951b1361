"""``python -m backbones pick`` (or ``python -m tasks.benchmark pick``): which backbones, with a task's head, fit a
latency budget on this machine.

Every candidate is built with the head of the task's COCO / VOC config (SSDLite with 80 classes on
the C4-expansion and C5 taps; DeepLabV3+ at output stride 16 with 20 classes; the pose head with the
17 COCO keypoints and flip test on 4:3 crops, 256x192 at --size 256), run on random uint8 images of
the asked size, and timed after warm-up; the list gives the ones within the budget, fastest first.

What is timed is the network from uint8 image to the head's output — scaling, normalization,
resizing, backbone and head — plus segmentation's and pose's decoding. Detection's box decoding and
NMS are left out: their cost does not depend on the backbone, and on untrained weights (every score
above the threshold) it is far larger than a trained detector's (``python -m tasks.benchmark runtimes``
times a trained one whole).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import Backbone, inference_copy, list_backbones
from heads.deeplabv3plus import DeepLabV3Plus
from heads.pose import SimpleBaseline
from heads.ssdlite import SSDLite

from ..data.pose import COCO_KEYPOINTS
from ..deploy.export import export_onnx
from ..deploy.runtime import ExportedModel

TASKS = ("detect", "segment", "pose")
RUNTIMES = ("eager", "onnx")


class _DetectorNetwork(nn.Module):
    """SSDLite up to its head's outputs (no box decoding or NMS)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        side = self.detector.image_size
        x = self.detector.input(images, (side, side))
        return self.detector.head(list(self.detector.backbone(x).values()))


def pose_width(height: int) -> int:
    """The width of a 4:3 pose crop ``height`` tall, as a multiple of the stride 32 (256 -> 192)."""
    return max(32, round(0.75 * height / 32) * 32)


def build(task: str, name: str, size: int, **options) -> tuple[nn.Module, tuple[int, int]]:
    """The network ``python -m backbones pick`` times for ``task`` on backbone ``name`` (with its ``options``,
    e.g. ``width_mult``), and its input size.

    Raises:
        ValueError: the backbone cannot take the head's configuration (e.g. output stride 16).
    """
    if task == "detect":
        try:
            backbone = Backbone(name, levels=[16, 32], feature_location="expansion", options=options)
        except ValueError:  # no expansion layer to tap: the block outputs
            backbone = Backbone(name, levels=[16, 32], options=options)
        return _DetectorNetwork(SSDLite(backbone, num_classes=80, image_size=size)), (size, size)
    if task == "segment":
        return DeepLabV3Plus(Backbone(name, levels=[4, 32], output_stride=16, options=options), num_classes=20,
                             image_size=size), (size, size)
    if task == "pose":
        if size % 32:
            raise ValueError(f"pose crops are multiples of the stride 32, got --size {size}")
        network = SimpleBaseline(Backbone(name, levels=[32], options=options), list(COCO_KEYPOINTS))
        return network, (size, pose_width(size))
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def measure(task: str, network: nn.Module, input_size: tuple[int, int], runtime: str = "eager", repeats: int = 10,
            warmup: int = 3, batches: Sequence[int] = (1,)) -> dict[str, Any]:
    """Parameters (M), GFLOPs (of one image) and the median latency (ms) at each of ``batches`` of ``task``'s
    ``network`` in ``runtime``: ``{"params", "gflops", "ms": {batch: ms}}``."""
    network.eval()
    generator = torch.Generator().manual_seed(0)
    inputs = {b: torch.randint(0, 256, (b, 3, *input_size), dtype=torch.uint8, generator=generator) for b in batches}
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(inputs[batches[0]][:1])
    params = sum(p.numel() for p in network.parameters()) / 1e6
    latency = {}
    with tempfile.TemporaryDirectory() as scratch:
        run = runner(task, network, input_size, runtime, Path(scratch))
        with torch.inference_mode():
            for batch, x in inputs.items():
                times = []
                for i in range(warmup + repeats):
                    start = time.perf_counter()
                    run(x)
                    if i >= warmup:
                        times.append(1e3 * (time.perf_counter() - start))
                latency[batch] = statistics.median(times)
    return {"params": params, "gflops": counter.get_total_flops() / 1e9, "ms": latency}


def runner(task: str, network: nn.Module, input_size: tuple[int, int], runtime: str, scratch: Path,
           spinning: bool = True) -> Callable:
    """``network`` as ``runtime`` runs it: an inference copy (eager), or exported into ``scratch`` and loaded in
    ONNX Runtime (``spinning``: whether its threads spin between calls; off when timed beside others)."""
    if runtime == "eager":
        return inference_copy(network)  # as Kestrel runs it: batch norms folded, channels-last
    if runtime != "onnx":
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    path = export_onnx(network, scratch / "model.onnx", {"task": task, "input_size": list(input_size)})
    return ExportedModel(path, threads=torch.get_num_threads(), spinning=spinning)


def pick(task: str, size: int, budget_ms: float, names: list[str] | None = None, runtime: str = "eager",
         repeats: int = 10, progress: Callable[[str], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Every backbone measured with ``task``'s head; those within ``budget_ms`` (fastest first), and the rest.

    The rest holds the ones over budget (fastest first) and, with an ``error``, those that cannot
    take the head.
    """
    rows = []
    for name in names or list_backbones():
        if progress:
            progress(name)
        try:
            network, input_size = build(task, name, size)
        except (ValueError, TypeError, FileNotFoundError) as err:
            rows.append({"backbone": name, "error": str(err)})
            continue
        timed = measure(task, network, input_size, runtime, repeats)
        rows.append({"backbone": name, **timed, "ms": timed["ms"][1]})
    timed = sorted((r for r in rows if "ms" in r), key=lambda r: r["ms"])
    fits = [r for r in timed if r["ms"] <= budget_ms]
    return fits, [r for r in timed if r["ms"] > budget_ms] + [r for r in rows if "error" in r]


def main(argv: list[str] | None = None, prog: str = "python -m backbones pick") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="backbones to consider (default: every registered one)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--size", type=int, default=320,
                        help="input size: square for detect and segment; pose: the crop height, a multiple of 32 "
                        "(256: 256x192 crops)")
    parser.add_argument("--budget-ms", type=float, required=True, help="latency budget of one image (batch 1)")
    parser.add_argument("--runtime", default="eager", choices=RUNTIMES,
                        help="eager PyTorch, or the network exported to ONNX and run in ONNX Runtime")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per backbone, after 3 warm-up runs")
    args = parser.parse_args(argv)
    if args.budget_ms <= 0 or args.size < 32:
        parser.error("--budget-ms must be positive and --size at least 32")
    if args.task == "pose" and args.size % 32:
        parser.error(f"--size of pose crops must be a multiple of 32, got {args.size}")
    torch.set_num_threads(args.threads)
    names = args.names or list_backbones()
    print(f"{args.task} at {args.size} px, batch 1, {args.runtime}, {args.threads} thread(s), "
          f"median of {args.repeats} runs; budget {args.budget_ms:g} ms", flush=True)
    fits, rest = pick(args.task, args.size, args.budget_ms, names, args.runtime, args.repeats,
                      progress=lambda name: print(f"  measuring {name} ...", flush=True))
    header = "| backbone | ms | params (M) | GFLOPs |\n|---|---:|---:|---:|"
    print(f"\nWithin {args.budget_ms:g} ms, fastest first:\n")
    print(header if fits else "none")
    for row in fits:
        print(f"| {row['backbone']} | {row['ms']:.1f} | {row['params']:.2f} | {row['gflops']:.2f} |")
    over = [r for r in rest if "ms" in r]
    if over:
        print("\nOver budget:\n\n" + header)
        for row in over:
            print(f"| {row['backbone']} | {row['ms']:.1f} | {row['params']:.2f} | {row['gflops']:.2f} |")
    for row in rest:
        if "error" in row:
            print(f"cannot build {row['backbone']} with the {args.task} head: {row['error']}")
    return 0
