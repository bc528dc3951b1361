"""Accuracy of each form of a trained network: the task's own ``test`` on the config's data, with the
checkpoint or an exported file as ``--ckpt_path`` — the same split, the same evaluator and the same
report as a user gets — and how closely each form's outputs follow PyTorch's on the timing images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any

from ..export import agreement

# the headline number of each task's report, and a second one worth a column
MAIN_METRICS = {"detect": ("map", "map_50"), "segment": ("miou", "pixel_accuracy"), "pose": ("ap", "ap_50")}


def test_metrics(task: str, config: Path, ckpt_path: Path, root: Path) -> tuple[dict[str, Any], Path]:
    """``python -m tasks.<task> test --config CONFIG --ckpt_path CKPT_PATH`` run in this process, on the CPU,
    its run written under ``root``; returns ``metrics.json`` and the report's folder. The command's own
    output goes to ``root/test.log``."""
    from ..hub import _task_module

    root.mkdir(parents=True, exist_ok=True)
    args = ["test", "--config", str(config), "--ckpt_path", str(ckpt_path),
            "--trainer.default_root_dir", str(root), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--trainer.strategy", "auto", "--trainer.num_nodes", "1", "--trainer.enable_progress_bar", "false",
            "--trainer.logger.class_path", "pytorch_lightning.loggers.CSVLogger",
            "--trainer.logger.init_args.save_dir", str(root)]
    lightning = logging.getLogger("pytorch_lightning")
    level = lightning.level
    lightning.setLevel(logging.WARNING)
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            _task_module(task).cli_main(args)
    finally:
        lightning.setLevel(level)
        with open(root / "test.log", "a") as log:
            log.write(output.getvalue())
    versions = sorted((root / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    report = versions[-1] / "report"
    return json.loads((report / "metrics.json").read_text()), report


def agreement_text(task: str, stats: dict[str, float]) -> str:
    """A table cell: how one form's outputs compare with PyTorch eager's on the same images."""
    if task == "segment":
        return f"{100 * stats['pixel_agreement']:.2f}% of pixels"
    if task == "pose":
        return f"keypoints within {stats['max_keypoint_diff']:.2g} px"
    matched = stats["detections"] - stats["unmatched"]
    return f"{matched} of {stats['detections']} detections matched ({stats['candidate_detections']} found)"


def compare(task: str, reference: list[dict], candidate: list[dict], int8: bool) -> dict[str, float]:
    """:func:`tasks.export.agreement` with the tolerance export's own check uses (1 px for INT8)."""
    return agreement(task, reference, candidate, box_tolerance=1.0 if int8 else 1e-2)
