"""Wall-clock timing that survives a shared machine: models take turns, and every turn starts untimed.

A busy moment of the machine should slow every model alike, so the models run in rounds, each its
turn of a few calls per batch size. The first call of a turn is not timed: runtimes leave their
worker threads spinning for a while after a call (ONNX Runtime's pool, OpenMP's), and that spin
would be charged to whichever model runs next. ONNX Runtime sessions made for timing do not spin at
all (``tasks.deploy.runtime.ExportedModel(..., spinning=False)``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch


def interleaved(models: Mapping[str, Callable[[Any], object]], batches: Mapping[str, Mapping[int, Any]], repeats: int,
                rounds: int | None = None, progress: Callable[[str], None] | None = None, warmup: int = 20
                ) -> dict[str, dict[int, list[float]]]:
    """Milliseconds of ``repeats`` calls of each model on each batch.

    Args:
        models: Name -> callable taking a batch.
        batches: For each model, batch size -> what it is called with.
        repeats: Timed calls per model and batch size.
        rounds: How many turns ``repeats`` are spread over (each turn one untimed call first). By default one
            per timed call: the models take turns call by call, so that a slow spell of a shared machine falls on
            all of them alike and their ratios (a file's pipeline cost over its network) hold.
        progress: Told at each tenth of the rounds.
        warmup: Untimed calls of each model on each batch first: runtimes allocate on their first calls, and
            Kestrel's OpenVINO runtime compiles a file again for an input shape that keeps coming (after 16 calls,
            :meth:`tasks.deploy.runtime.ExportedModel._openvino_for`).
    """
    rounds = max(1, min(rounds or repeats, repeats))
    per_turn = math.ceil(repeats / rounds)
    times: dict[str, dict[int, list[float]]] = {name: {} for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            for batch in batches[name].values():
                for _ in range(warmup):
                    model(batch)
        for round_ in range(rounds):
            if progress and round_ % max(1, rounds // 10) == 0:
                progress(f"round {round_ + 1}/{rounds}")
            for name, model in models.items():
                for size, batch in batches[name].items():
                    model(batch)  # untimed: the previous model's threads may still be spinning
                    samples = times[name].setdefault(size, [])
                    for _ in range(min(per_turn, repeats - len(samples))):
                        start = time.perf_counter()
                        model(batch)
                        samples.append(1e3 * (time.perf_counter() - start))
    return times


def summary(samples: list[float]) -> dict[str, float]:
    """Median and the 25th-75th percentile spread of milliseconds."""
    return {"median": float(np.median(samples)), "p25": float(np.percentile(samples, 25)),
            "p75": float(np.percentile(samples, 75))}


def milliseconds(stats: dict[str, float]) -> str:
    """``12.3 (11.9-12.8)``."""
    return f"{stats['median']:.1f} ({stats['p25']:.1f}-{stats['p75']:.1f})"


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """PyTorch's intra-op threads set to ``count`` for a measurement, and given back after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def with_threads(function: Callable) -> Callable:
    """``function`` (whose ``threads`` argument says how many) run with that many PyTorch threads, and the
    caller's count given back after it."""
    @functools.wraps(function)
    def measured(*args, **kwargs):
        bound = inspect.signature(function).bind(*args, **kwargs)
        bound.apply_defaults()
        with torch_threads(bound.arguments["threads"]):
            return function(*args, **kwargs)

    return measured
