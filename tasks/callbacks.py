"""What every ``fit`` gets from the command line: the two checkpoints, written atomically; the fit clock; and the
guard that ends a diverging run."""

from __future__ import annotations

import errno
import io
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, Timer
from pytorch_lightning.plugins import TorchCheckpointIO

from backbones._weights import non_finite

from .reporting.runs import duration


class RunStopped(RuntimeError):
    """A run that ended before its length, for a reason the user must hear: one line, and the exit status
    (1; 143, as a shell reports a process SIGTERM ended, for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code




def checkpoints(monitor: str, dirpath: str | None = None, mode: str = "max", every_n_train_steps: int = 500,
                save_on_exception: bool = True) -> list[ModelCheckpoint]:
    """Lightning's stock ``ModelCheckpoint``, three times, for two files kept apart (the ``checkpoint.*``
    options of the command line):

    - ``best.ckpt``: the best weights by ``monitor``, written only at the end of a validation, so that the
      score it is kept by measured the weights it holds;
    - ``last.ckpt``: the latest weights, at the end of every epoch (after its validation, if it has one), every
      ``every_n_train_steps`` training steps and, with ``save_on_exception``, when a run fails (a bad file
      found while training, an interrupt): a crash costs at most the steps since the last one, and
      ``fit --ckpt_path last`` resumes.

    Args:
        monitor: The validation metric ``best.ckpt`` is kept by.
        dirpath: The checkpoint folder (default: the run's ``checkpoints/``).
        mode: ``max`` (higher is better) or ``min``.
        every_n_train_steps: Steps between two ``last.ckpt`` (0: at validations only).
        save_on_exception: Write ``last.ckpt`` when the run fails.
    """
    common = {"save_top_k": 1, "auto_insert_metric_name": False, "enable_version_counter": False}
    return [
        ModelCheckpoint(dirpath, "best", monitor, mode=mode, **common),
        # at every epoch's end, validated or not: a run that validates less often than it ends still keeps one
        ModelCheckpoint(dirpath, "last", None, every_n_epochs=1, save_on_train_epoch_end=True, **common),
        ModelCheckpoint(dirpath, "last", None, every_n_train_steps=every_n_train_steps or None,
                        every_n_epochs=None if every_n_train_steps else 0, save_on_exception=save_on_exception,
                        **common),
    ]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic wherever the run folder is: the checkpoint goes to a temporary file
    in the target's own folder, is flushed and fsynced, then replaces the target (``os.replace``). Lightning's own
    writes through a temporary file in the system's temporary folder and copies it across when that is another
    filesystem, which is no longer atomic. A write that fails (a full disk) leaves the previous checkpoint as it
    was, removes the partial file, and ends the run with one line naming the folder and the space it needs."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = io.BytesIO()  # serialized first, as Lightning does: a failed write is then the file's alone
        torch.save(checkpoint, data)
        descriptor, scratch = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data.getbuffer())
                out.flush()
                os.fsync(out.fileno())
            os.replace(scratch, path)
        except OSError as err:
            Path(scratch).unlink(missing_ok=True)
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise RunStopped(f"cannot write checkpoint {path}: {err.strerror or err}; "
                                 f"{path.name} as it was before is kept") from err
            free = shutil.disk_usage(path.parent).free
            raise RunStopped(f"no space left in {path.parent} to write {path.name}: it needs "
                             f"{data.getbuffer().nbytes / 1e6:.1f} MB, {free / 1e6:.1f} MB are free. {path.name} as it "
                             "was before is kept: free some space, then resume with --ckpt_path last") from err
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise


class DivergenceGuard(Callback):
    """Ends ``fit`` when training diverges, before the step that diverged changes the weights.

    A loss that is NaN or infinite, a loss ``explosion`` times the first step's (the loss of the weights the run
    started from: a run whose loss grows by orders of magnitude is not training), or a gradient that is not finite
    (unless float16 mixed precision's gradient scaler is there to skip such steps) stops the run with
    :class:`RunStopped` naming the step and the value. The weights are then still those of the step before, and
    ``last.ckpt`` (written on the way out) holds them. No checkpoint with a non-finite tensor is written: if the
    weights became non-finite anyway (a finite gradient times an enormous learning rate), the checkpoint is
    refused and the last one written stays.
    """

    def __init__(self, explosion: float = 1e3):
        self.explosion = explosion
        self._first: float | None = None
        self._previous: tuple[int, float] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._first, self._previous = None, None

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            self._stop(trainer, pl_module, f"the loss is {value}")
        if self._first is None:
            self._first = value
        elif self._first > 0 and value > self.explosion * self._first:
            self._stop(trainer, pl_module, f"the loss is {value:.4g}, {value / self._first:.0f} times the first "
                                           f"step's {self._first:.4g}")
        self._previous = (trainer.global_step, value)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # float16 mixed precision: its gradient scaler skips the steps whose gradients overflow
        gradients = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if gradients and not torch.isfinite(torch.nn.utils.get_total_norm(gradients)):
            name = next(n for n, p in pl_module.named_parameters()
                        if p.grad is not None and not torch.isfinite(p.grad).all())
            self._stop(trainer, pl_module, f"the gradient of {name} is not finite")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        bad = non_finite(checkpoint.get("state_dict", {}))
        if bad:
            raise RunStopped(f"training diverged by step {trainer.global_step}: {len(bad)} of the weights' tensors "
                             f"are not finite ({bad[0]}, ...), so no checkpoint is written; the last one written is "
                             f"kept. {_ADVICE}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if non_finite(pl_module.state_dict()):  # last.ckpt on the way out would be refused: keep the one written
            for callback in trainer.checkpoint_callbacks:
                callback.save_on_exception = False

    def _stop(self, trainer, pl_module, what: str) -> None:
        before = (f" (step {self._previous[0]}: loss {self._previous[1]:.4g})" if self._previous else "")
        if not non_finite(pl_module.state_dict()):
            kept = "last.ckpt holds the weights from before it"
        else:
            written = sorted(Path(c.dirpath) / "last.ckpt" for c in trainer.checkpoint_callbacks
                             if c.dirpath and (Path(c.dirpath) / "last.ckpt").is_file())
            kept = (f"the weights stopped being finite before it, so {written[0]} (written before) is kept as it is"
                    if written else "the weights stopped being finite before it, so no checkpoint is written")
        raise RunStopped(f"training diverged at step {trainer.global_step}: {what}{before}; {kept}. {_ADVICE}")


_ADVICE = ("Lower the learning rate (--model.optimizer.init_args.lr) or lengthen its warm-up "
           "(--model.scheduler.init_args.warmup_steps), then fit again")


class FitTimer(Timer):
    """Lightning's ``Timer`` (it also enforces ``trainer.max_time``) that says how long a fit took: the wall
    time since training started (``time/fit_s``) and the share spent validating (``time/validation_s``)
    are logged every epoch, and the fit ends with one line, ``Fit: 10 epochs, 2500 steps in 9 min 12 s
    (validation 35 s of it)``. The report of a checkpoint's ``test`` reads them from the run's log. A
    resumed fit counts on from the checkpoint's time.
    """

    def __init__(self, duration=None, interval: str = "step", verbose: bool = True) -> None:
        super().__init__(duration, interval, verbose)
        self._validation_started: float | None = None
        self._validating = 0.0
        self._validating_offset = 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        super().on_validation_start(trainer, pl_module)
        self._validation_started = None if trainer.sanity_checking else time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if self._validation_started is not None:
            self._validating += time.monotonic() - self._validation_started
            self._validation_started = None

    def validation_seconds(self) -> float:
        """Wall time of the fit's validation loops (the sanity check not counted)."""
        return self._validating_offset + self._validating

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        pl_module.log_dict({"time/fit_s": self.time_elapsed("train"), "time/validation_s": self.validation_seconds()},
                           rank_zero_only=True)

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if trainer.is_global_zero and not trainer.fast_dev_run:
            epochs = trainer.current_epoch
            print(f"Fit: {epochs} epoch{'s' * (epochs != 1)}, {trainer.global_step} steps in "
                  f"{duration(self.time_elapsed('train'))} (validation {duration(self.validation_seconds())} of it)")

    def state_dict(self) -> dict:
        return {**super().state_dict(), "validation_s": self.validation_seconds()}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._validating_offset = state_dict.get("validation_s", 0.0)
