"""What a benchmark ran on: the CPU and what it can do, threads, accelerator, library versions, date.

Published latencies are often 5-20x off on users' machines because the machine is not stated; every
table Kestrel prints states it. The instruction-set flags that decide CPU speed are named: AVX2 and
AVX-512 for float convolutions, VNNI (AVX512-VNNI or AVX-VNNI) and AMX for int8 dot products —
without one of those an INT8 model has no faster path than float on a CPU.
"""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

# cpuinfo flag -> what it is called in the table
_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX512-VNNI",
    "avx_vnni": "AVX-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
}
INT8_FLAGS = ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8")
LIBRARIES = ("torch", "torchvision", "onnxruntime", "openvino", "timm", "segmentation_models_pytorch",
             "kestrel-vision")


def _cpuinfo() -> dict[str, str]:
    """The first processor's entries of ``/proc/cpuinfo`` (Linux), else nothing."""
    entries: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return entries
    for line in text.splitlines():
        if not line.strip():
            break
        key, _, value = line.partition(":")
        entries[key.strip()] = value.strip()
    return entries


def cpu_name() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what the platform says."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The instruction-set extensions of :data:`_FLAGS` this CPU has."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [name for flag, name in _FLAGS.items() if flag in flags]


def has_int8_instructions(flags: list[str] | None = None) -> bool:
    """Whether the CPU has int8 dot-product instructions (VNNI or AMX), without which INT8 gains no speed."""
    return any(flag in (cpu_flags() if flags is None else flags) for flag in INT8_FLAGS)


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def describe_machine(threads: int) -> dict[str, Any]:
    """Everything a reader needs to compare a table with their own machine's."""
    flags = cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "cores": cores,
        "threads": threads,
        "flags": flags,
        "int8_instructions": has_int8_instructions(flags),
        "gpu": gpu,
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
        "libraries": {name: v for name in LIBRARIES if (v := _version(name))},
    }


def machine_line(machine: dict[str, Any]) -> str:
    """One paragraph: CPU, cores and threads, flags, INT8 support, accelerator, versions, date."""
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    int8 = ("has int8 dot-product instructions" if machine["int8_instructions"]
            else "has no int8 dot-product instructions (VNNI/AMX): INT8 cannot run faster than float on it")
    return (f"{machine['cpu']}, {machine['cores']} cores available, {machine['threads']} thread(s) used; "
            f"{', '.join(machine['flags']) or 'no AVX'}: {int8}; "
            f"GPU: {machine['gpu'] or 'none'} (timings are the CPU's); "
            f"Python {machine['python']} on {machine['system']}; {libraries}; {machine['date']}")
