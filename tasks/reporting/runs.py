"""What a run folder says about the training behind a checkpoint: its ``metrics.csv`` logs (resumed fits joined)
and how long the fit took."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import yaml
from pytorch_lightning.loggers import CSVLogger

from .plots import read_log


def duration(seconds: float) -> str:
    """``9 min 12 s``, ``35 s``, ``1 h 2 min``."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


def training_logs(trainer: pl.Trainer, exported_from: str | None = None) -> list[Path]:
    """The ``metrics.csv`` files of the training that made the weights being evaluated: the run folder of the
    checkpoint (``version_N/checkpoints/x.ckpt``; for an exported file, the checkpoint it came from) and of
    any later ``fit`` that resumed from that folder's checkpoints (its ``config.yaml`` names one), in order;
    else the trainer's own CSV log when it has trained (fit, then test, in one process)."""
    checkpoint = exported_from or getattr(trainer, "ckpt_path", None)
    if checkpoint and Path(checkpoint).parent.name == "checkpoints":
        folder = Path(checkpoint).parent
        runs = [folder.parent]
        for run in sorted(folder.parent.parent.glob("version_*"), key=_version_number):
            if run != folder.parent and _resumed_from(run) == folder.resolve():
                runs.append(run)
        return [run / "metrics.csv" for run in runs if _trained(run / "metrics.csv")]
    if checkpoint is None and trainer.global_step > 0:
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger):
                logger.save()
                log = Path(logger.log_dir) / "metrics.csv"
                return [log] if log.is_file() else []
    return []


def fit_time(logs: Sequence[Path]) -> str | None:
    """How long the fit of these training logs took, by the ``time/fit_s`` its :class:`tasks.callbacks.FitTimer`
    logged each epoch (a resumed fit counts on from its checkpoint's): ``9 min 12 s for 10 epochs (validation
    35 s of it)``; None if they hold none."""
    rows = [row for log in logs for row in read_log(log) if "time/fit_s" in row]
    if not rows:
        return None
    last = rows[-1]
    epochs = int(last["epoch"]) + 1
    return (f"{duration(last['time/fit_s'])} for {epochs} epoch{'s' * (epochs != 1)} "
            f"(validation {duration(last.get('time/validation_s', 0.0))} of it)")


def _trained(log: Path) -> bool:
    """Whether a ``metrics.csv`` logged training (not only a test run's numbers)."""
    try:
        with open(log) as file:
            return "train/" in file.readline()
    except OSError:
        return False


def _version_number(run: Path) -> int:
    number = run.name.removeprefix("version_")
    return int(number) if number.isdigit() else -1


def _resumed_from(run: Path) -> Path | None:
    """The checkpoint folder whose checkpoint a run started from (its saved config's ``ckpt_path``)."""
    try:
        path = yaml.safe_load((run / "config.yaml").read_text()).get("ckpt_path")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return Path(path).parent.resolve() if path else None
