"""How closely an exported file (or any other form of a network) follows PyTorch, image by image: what
``export`` checks before it prints the file's path, and the benchmark's "agrees with eager" column."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def agreement(task: str, reference: Sequence[dict[str, torch.Tensor]], candidate: Sequence[dict[str, torch.Tensor]],
              box_tolerance: float = 1e-3) -> dict[str, float]:
    """How closely ``candidate`` outputs (an export's) follow ``reference`` ones (PyTorch's), image by image.

    detect: ``detections`` / ``candidate_detections`` counts, ``unmatched`` reference detections (no
    candidate of its class within ``box_tolerance`` px on every coordinate, matched greedily by
    score), and the largest box and score differences of the matched ones. segment:
    ``pixel_agreement``, the share of equal labels. pose: the largest keypoint and score differences.
    """
    if task == "segment":
        equal = sum(int((r["labels"] == c["labels"]).sum()) for r, c in zip(reference, candidate))
        return {"pixel_agreement": equal / max(sum(r["labels"].numel() for r in reference), 1)}
    if task == "pose":
        diff = [(r["keypoints"] - c["keypoints"]).abs() for r, c in zip(reference, candidate)]
        return {"max_keypoint_diff": max(float(d[:, :2].max()) for d in diff),
                "max_score_diff": max(float(d[:, 2].max()) for d in diff)}
    stats = {"detections": 0, "candidate_detections": 0, "unmatched": 0, "max_box_diff": 0.0, "max_score_diff": 0.0}
    for r, c in zip(reference, candidate):
        stats["detections"] += len(r["boxes"])
        stats["candidate_detections"] += len(c["boxes"])
        distance = (r["boxes"][:, None].double() - c["boxes"][None].double()).abs().amax(-1)
        distance[r["labels"][:, None] != c["labels"][None]] = float("inf")
        used = torch.zeros(len(c["boxes"]), dtype=torch.bool)
        for i in torch.argsort(r["scores"], descending=True).tolist():
            row = distance[i].masked_fill(used, float("inf"))
            j = int(row.argmin()) if len(row) else -1
            if j < 0 or row[j] > box_tolerance:
                stats["unmatched"] += 1
                continue
            used[j] = True
            stats["max_box_diff"] = max(stats["max_box_diff"], float(row[j]))
            stats["max_score_diff"] = max(stats["max_score_diff"], abs(float(r["scores"][i] - c["scores"][j])))
    return stats


def budget(reference: Sequence[dict[str, torch.Tensor]],
           candidate: Sequence[dict[str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
    """``reference`` detections cut to as many per image as ``candidate`` has: a file whose NMS visits a fixed
    number of candidates (:meth:`heads.ssdlite.SSDLite.fixed_shapes`) gives the first of the usual detections
    (other tasks' outputs are returned as they are)."""
    return [{k: v[: len(c["boxes"])] for k, v in r.items()} if "boxes" in r else r
            for r, c in zip(reference, candidate)]


def summarize(task: str, stats: dict[str, float]) -> str:
    if task == "segment":
        return f"{100 * stats['pixel_agreement']:.3f}% of pixels labelled alike"
    if task == "pose":
        return (f"keypoints within {stats['max_keypoint_diff']:.2g} px, scores within "
                f"{stats['max_score_diff']:.2g}")
    return (f"{stats['candidate_detections']} detections for PyTorch's {stats['detections']}, "
            f"{stats['unmatched']} unmatched; matched boxes within {stats['max_box_diff']:.2g} px, "
            f"scores within {stats['max_score_diff']:.2g}")


def faithful(task: str, stats: dict[str, float]) -> bool:
    """Whether a float export reproduces PyTorch (detections one for one, labels on 99.9% of pixels,
    keypoints within 0.1 px)."""
    if task == "segment":
        return stats["pixel_agreement"] >= 0.999
    if task == "pose":
        return stats["max_keypoint_diff"] <= 0.1
    return stats["unmatched"] == 0 and stats["candidate_detections"] == stats["detections"]
