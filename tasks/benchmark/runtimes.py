"""``python -m tasks.benchmark runtimes CKPT FILES...``: a checkpoint in eager PyTorch beside its exported
files (ONNX Runtime, OpenVINO, INT8; ExecuTorch and LiteRT at batch 1), each called on the same uint8 batches,
pre- and post-processing included, the models taking turns (``tasks.benchmark.timing``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from backbones import inference_copy

from .._base import checkpoint_hyperparameters
from ..deploy.runtime import ExportedModel, file_size_mb, is_exported
from ..from_config import task_class
from .machine import describe_machine, machine_line
from .timing import interleaved, milliseconds, summary, with_threads


@with_threads
def runtimes(checkpoint: str | Path, files: Sequence[str | Path], size: tuple[int, int] = (480, 640),
             batches: Sequence[int] = (1, 8), threads: int = 2, repeats: int = 20,
             say: Callable[[str], None] = print) -> dict[str, dict[int, dict[str, float]]]:
    """Time ``checkpoint`` and its exported ``files``; print a table; return the milliseconds by model and batch."""
    files = [Path(f) for f in files]
    if not files or any(not is_exported(f) for f in files):
        raise ValueError("runtimes compares a checkpoint with exported .onnx / .xml / .tflite / .pte files")
    if is_exported(checkpoint):
        raise ValueError(f"the first file is the checkpoint the others were exported from (best.ckpt); {checkpoint} is "
                         "an exported file")
    names = [f.name for f in files]
    keys = names if len(set(names)) == len(names) else [str(f) for f in files]  # two model_int8.onnx: their paths
    exported = {key: ExportedModel(f, threads=threads, spinning=False) for key, f in zip(keys, files)}
    tasks = {name: model.metadata.get("task") for name, model in exported.items()}
    if len(set(tasks.values())) > 1:
        raise ValueError(f"the files are models of different tasks ({', '.join(f'{n}: {t}' for n, t in tasks.items())})"
                         ": compare one checkpoint with files exported from it")
    metadata = next(iter(exported.values())).metadata
    try:
        task = task_class(metadata["task"]).load_from_checkpoint(checkpoint, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - torch and jsonargparse raise many kinds for "not this task's checkpoint"
        head = checkpoint_hyperparameters(str(checkpoint)).get("head")
        what = f"its head is {head.get('class_path', head)}" if isinstance(head, dict) else \
            f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
        raise ValueError(f"{checkpoint} is not a checkpoint of the files' task, {metadata['task']} ({what})") from None
    models: dict[str, Callable] = {"PyTorch eager": inference_copy(task.model), **exported}
    height, width = metadata["input_size"] if metadata["task"] == "pose" else size
    generator = torch.Generator().manual_seed(0)
    inputs = {b: torch.randint(0, 256, (b, 3, height, width), dtype=torch.uint8, generator=generator) for b in batches}
    # a phone file (fixed_input_size) runs batch 1, as a phone runs it
    phone = {name for name, model in exported.items() if "fixed_input_size" in model.metadata}
    times = interleaved(models, {name: {b: x for b, x in inputs.items() if b == 1 or name not in phone}
                                 for name in models}, repeats)
    say(f"Machine: {machine_line(describe_machine(threads))}.\n\ninput uint8 {height}x{width}, pre- and "
        f"post-processing included; median (25th-75th percentile) of {repeats} calls, models taking turns\n")
    header = ["runtime", "file size (MB)", *(f"batch {b} (ms)" for b in batches)]
    say("| " + " | ".join(header) + " |\n|---|" + "---:|" * (len(header) - 1))
    checkpoint_mb = sum(p.numel() * p.element_size() for p in task.model.state_dict().values()) / 1e6
    result = {}
    for name, model in models.items():
        eager = name == "PyTorch eager"
        runtime = name if eager else f"{model.runtime.split(' (')[0]}: {name}"
        stats = {b: summary(t) for b, t in times[name].items()}
        result[name] = stats
        size_mb = checkpoint_mb if eager else file_size_mb(model.path)
        cells = [milliseconds(stats[b]) if b in stats else "-" for b in batches]
        say(f"| {runtime} | {size_mb:.2f} | " + " | ".join(cells) + " |")
    return result
