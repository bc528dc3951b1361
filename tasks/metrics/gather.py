"""Collecting per-image results from every process of a distributed run."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def gather_by_index(local: dict[int, Any]) -> dict[int, Any]:
    """Merge every process's ``{image index: result}`` into one dict, on every process.

    A ``DistributedSampler`` pads the last batches with repeated images; keying by image index counts
    each image once, so the metrics equal a single-process run's.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return dict(local)
    parts: list[dict[int, Any] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    merged: dict[int, Any] = {}
    for part in parts:
        merged.update(part or {})
    return merged
