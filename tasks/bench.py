"""``python -m tasks.bench``: is the data loader or the model the bottleneck of detection training?

Measures, on this machine, images per second of (1) the training data loader (decode, ``ssdlite``
augmentation, resize, collate) with 0, 1 and 2 workers, (2) SSDLite training steps (forward,
backward, SGD) and (3) inference. The loader keeps up when (1) exceeds (2) for the workers you give
it. Run it on a quiet machine; numbers are wall-clock medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from backbones import Backbone
from heads.ssdlite import SSDLite

from .data.detection import DetectionData


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
    batch = list(images.float().div(255))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    train, infer = [], []
    for _ in range(steps + 2):
        model.train()
        start = time.perf_counter()
        losses = model(batch, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        train.append(time.perf_counter() - start)
        model.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            model(batch)
        infer.append(time.perf_counter() - start)
    n = len(batch)
    return n / statistics.median(train[2:]), n / statistics.median(infer[2:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default="data/shapes/coco", help="a COCO-layout folder (default: the demo data)")
    parser.add_argument("--backbone", default="mobilenet_v3_large")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    main()
