"""Speed, measured on this machine: ``python -m tasks.bench {training,runtimes}``.

``training``: is the data loader or the model the bottleneck of detection training? Images per
second of (1) the training loader (decode, ``ssdlite`` augmentation, resize, collate) with 0, 1 and 2
workers, (2) SSDLite training steps (forward, backward, SGD) and (3) inference. The loader keeps up
when (1) exceeds (2) for the workers you give it.

``runtimes``: a checkpoint in eager PyTorch beside its exported files (ONNX Runtime, OpenVINO, INT8),
each called on the same uint8 batches, pre- and post-processing included, batch 1 and 8. The models
take turns, run after run, so that a busy moment of the machine slows all alike; the table gives
medians and the spread (25th-75th percentile).

Run either on a quiet machine; the numbers are wall-clock times.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from backbones import Backbone
from heads.ssdlite import SSDLite

from .data.detection import DetectionData
from .hub import task_class
from .runtime import ExportedModel, file_size_mb, is_exported


def loader_rate(data: DetectionData, batches: int) -> float:
    loader = data.train_dataloader()
    iterator = iter(loader)
    next(iterator)  # workers start, first batch decoded
    start = time.perf_counter()
    seen = 0
    for _ in range(batches):
        images, _, _ = next(iterator)
        seen += len(images)
    return seen / (time.perf_counter() - start)


def model_rates(model: SSDLite, data: DetectionData, steps: int) -> tuple[float, float]:
    images, targets, _ = next(iter(data.train_dataloader()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train, infer = [], []
    for _ in range(steps + 2):
        model.train()
        start = time.perf_counter()
        losses = model(images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        train.append(time.perf_counter() - start)
        model.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            model(images)
        infer.append(time.perf_counter() - start)
    n = len(images)
    return n / statistics.median(train[2:]), n / statistics.median(infer[2:])


def training(args: argparse.Namespace) -> None:
    print(f"torch threads: {torch.get_num_threads()}; backbone {args.backbone}, {args.image_size}px, "
          f"batch {args.batch_size}\n")
    print("| what | images/s |\n|---|---:|")
    for workers in (0, 1, 2):
        data = DetectionData(args.root, image_size=args.image_size, batch_size=args.batch_size, num_workers=workers)
        data.setup("fit")
        print(f"| loader, ssdlite augmentation, {workers} worker(s) | {loader_rate(data, 2 * args.steps):.1f} |")
    backbone = Backbone(args.backbone, levels=[16, 32], feature_location="expansion")
    model = SSDLite(backbone, num_classes=data.num_classes, image_size=args.image_size)
    train, infer = model_rates(model, data, args.steps)
    print(f"| SSDLite training step (forward + backward + SGD) | {train:.1f} |")
    print(f"| SSDLite inference (with NMS) | {infer:.1f} |")


def machine() -> str:
    """The CPU's model name (Linux), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def interleaved(models: dict[str, Callable[[torch.Tensor], object]], batches: dict[int, torch.Tensor],
                repeats: int, warmup: int = 3) -> dict[str, dict[int, list[float]]]:
    """Milliseconds of each model on each batch, the models taking turns ``repeats`` times."""
    times: dict[str, dict[int, list[float]]] = {name: {b: [] for b in batches} for name in models}
    with torch.inference_mode():
        for round_ in range(warmup + repeats):
            for name, model in models.items():
                for size, batch in batches.items():
                    start = time.perf_counter()
                    model(batch)
                    if round_ >= warmup:
                        times[name][size].append(1e3 * (time.perf_counter() - start))
    return times


def runtimes(args: argparse.Namespace) -> None:
    files = [Path(f) for f in args.exported]
    if any(not is_exported(f) for f in files):
        raise SystemExit("error: runtimes compares a checkpoint with exported .onnx / .xml files")
    torch.set_num_threads(args.threads)
    exported = {f"{f.name}": ExportedModel(f, threads=args.threads) for f in files}
    metadata = next(iter(exported.values())).metadata
    task = task_class(metadata["task"]).load_from_checkpoint(args.checkpoint, map_location="cpu")
    models: dict[str, Callable] = {"PyTorch eager": task.model.eval(), **exported}
    height, width = metadata["input_size"] if metadata["task"] == "pose" or not args.size else args.size
    generator = torch.Generator().manual_seed(0)
    batches = {b: torch.randint(0, 256, (b, 3, height, width), dtype=torch.uint8, generator=generator)
               for b in args.batch}
    times = interleaved(models, batches, args.repeats)
    print(f"{machine()}, {args.threads} thread(s); torch {torch.__version__}; "
          f"input uint8 {height}x{width}, pre- and post-processing included; median (25th-75th percentile) "
          f"of {args.repeats} runs, models interleaved\n")
    header = ["runtime", "file size (MB)", *(f"batch {b} (ms)" for b in batches)]
    print("| " + " | ".join(header) + " |\n|---|" + "---:|" * (len(header) - 1))
    checkpoint_mb = sum(p.numel() * p.element_size() for p in task.model.state_dict().values()) / 1e6
    for name, model in models.items():
        size = checkpoint_mb if name == "PyTorch eager" else file_size_mb(model.path)
        runtime = name if name == "PyTorch eager" else f"{model.runtime.split(' (')[0]}: {name}"
        cells = [f"{np.median(t):.1f} ({np.percentile(t, 25):.1f}-{np.percentile(t, 75):.1f})"
                 for t in times[name].values()]
        print(f"| {runtime} | {size:.2f} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("training", help="data loader against training step (detection)")
    train.add_argument("--root", default="data/shapes/coco", help="a COCO-layout folder (default: the demo data)")
    train.add_argument("--backbone", default="mobilenet_v3_large")
    train.add_argument("--image-size", type=int, default=320)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--steps", type=int, default=8)
    run = commands.add_parser("runtimes", help="a checkpoint in PyTorch beside its exported files")
    run.add_argument("checkpoint", help="a Kestrel checkpoint (best.ckpt)")
    run.add_argument("exported", nargs="+", help="its exported files (.onnx, OpenVINO .xml)")
    run.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                     help="input images (default 480 640; pose: the crop size)")
    run.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    run.add_argument("--threads", type=int, default=2)
    run.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    training(args) if args.command == "training" else runtimes(args)


if __name__ == "__main__":
    main()
