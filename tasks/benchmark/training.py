"""``python -m tasks.benchmark training``: does anything but the model limit training?

Images per second, on a task config (the demo detector's by default), of:

1. the training loader alone (decode, augmentation, collate) with 0, 1 and 2 workers;
2. for detection, a bare torchvision training loop — ``SSD.forward`` with targets, backward, the
   optimizer — on batches preloaded in memory, as a torchvision user writes it (NCHW, no loader, no
   Lightning), and the same loop in channels-last memory;
3. ``python -m tasks.<task> fit`` itself — Lightning, the real loader with the config's workers,
   logging — timed by a callback over the same number of steps after the same warm-up, with
   ``--model.channels_last`` false and true.

The loader keeps up when (1) exceeds (3), and Kestrel's loop costs nothing when (3) is at least (2).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from ..from_config import config_task, data_from_config, task_from_config, task_module
from .machine import describe_machine, machine_line


class StepTimer(pl.Callback):
    """Wall time of each training step (batch start to batch end, the optimizer step included), and of the
    time between steps (the loader's wait)."""

    def __init__(self):
        self.steps: list[float] = []
        self.waits: list[float] = []
        self.images: list[int] = []
        self._start = self._end = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._end is not None:
            self.waits.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        self.steps.append(self._end - self._start)
        self.images.append(len(batch[0]))

    def rate(self, warmup: int) -> float:
        """Images per second over the steps after ``warmup``, waits for the loader included."""
        seconds = sum(self.steps[warmup:]) + sum(self.waits[warmup:])
        return sum(self.images[warmup:]) / seconds


def loader_rate(data: Any, batches: int) -> float:
    """Images per second the training loader delivers (after its first batch), epoch after epoch."""
    loader = data.train_dataloader()
    start, seen, delivered = None, 0, 0
    while delivered <= batches:
        iterator = iter(loader)
        for images, _ in iterator:
            if start is None:  # workers started, first batch decoded
                start = time.perf_counter()
            else:
                seen += len(images)
            delivered += 1
            if delivered > batches:
                break
        del iterator
    rate = seen / (time.perf_counter() - start)
    if loader._iterator is not None:  # persistent workers: stop them now, not whenever the loader is collected
        loader._iterator._shutdown_workers()
    return rate


def bare_loop_rate(network: torch.nn.Module, batches: list[tuple], steps: int, warmup: int,
                   channels_last: bool) -> float:
    """Images per second of a plain torchvision training loop over preloaded ``(images, targets)`` batches."""
    from torchvision.models.detection.ssd import SSD

    network.train()
    if channels_last:
        network.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3)
    floats = [([image.float() / 255 for image in images], targets) for images, targets in batches]
    times, seen = [], []
    for step in range(warmup + steps):
        images, targets = floats[step % len(floats)]
        start = time.perf_counter()
        losses = SSD.forward(network, images, targets)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        seen.append(len(images))
    return sum(seen[warmup:]) / sum(times[warmup:])


def fit_rate(config: Path, steps: int, warmup: int, root: Path, channels_last: bool = True) -> float:
    """Images per second of ``python -m tasks.<task> fit`` on ``config`` (no validation), run in this process."""
    cli = task_module(config_task(config)).cli_main([
        "fit", "--config", str(config), f"--trainer.max_steps={warmup + steps}", "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root}", "--trainer.logger.class_path=pytorch_lightning.loggers.CSVLogger",
        f"--trainer.logger.init_args.save_dir={root}", f"--model.channels_last={str(channels_last).lower()}",
        "--trainer.callbacks+=tasks.benchmark.training.StepTimer"])
    timer = next(c for c in cli.trainer.callbacks if isinstance(c, StepTimer))
    return timer.rate(warmup)


def training(config: Path, steps: int, warmup: int, root: Path, say=print) -> dict[str, float]:
    """Every rate of the module docstring, printed as a table; returns them."""
    task = config_task(config)
    data = data_from_config(config)
    data.setup("fit")
    workers = data.num_workers
    rates: dict[str, float] = {}
    for count in (0, 1, 2):
        data.num_workers = count
        rates[f"loader, {count} worker(s)"] = loader_rate(data, 2 * steps)
    if task == "detect":
        data.num_workers = 0
        preloaded = []
        for images, targets in data.train_dataloader():  # torchvision's targets: boxes and labels
            preloaded.append((images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets]))
            if len(preloaded) == 8:
                break
        for channels_last in (False, True):
            network = task_from_config(config, data=data).model
            label = "bare torchvision loop, preloaded batches" + (", channels-last" if channels_last else "")
            rates[label] = bare_loop_rate(network, preloaded, steps, warmup, channels_last)
    for channels_last in (False, True):
        label = f"python -m tasks.{task} fit (real loader, {workers} worker(s)), channels_last {channels_last}"
        rates[label] = fit_rate(config, steps, warmup, root / f"channels_last_{channels_last}", channels_last)
    say(f"Machine: {machine_line(describe_machine(torch.get_num_threads()))}.\n")
    say(f"{config}: batch {data.batch_size}, {data.image_size} px, {torch.get_num_threads()} thread(s), "
        f"{steps} steps after {warmup} of warm-up\n")
    say("| what | images/s |\n|---|---:|")
    for what, rate in rates.items():
        say(f"| {what} | {rate:.1f} |")
    return rates
