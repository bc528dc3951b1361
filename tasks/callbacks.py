"""The callbacks every ``fit`` gets from the command line: the two checkpoints and the fit clock."""

from __future__ import annotations

import time

from pytorch_lightning.callbacks import ModelCheckpoint, Timer

from .reporting.runs import duration


def checkpoints(monitor: str, dirpath: str | None = None, mode: str = "max", every_n_train_steps: int = 500,
                save_on_exception: bool = True) -> list[ModelCheckpoint]:
    """Lightning's stock ``ModelCheckpoint``, three times, for two files kept apart (the ``checkpoint.*``
    options of the command line):

    - ``best.ckpt``: the best weights by ``monitor``, written only at the end of a validation, so that the
      score it is kept by measured the weights it holds;
    - ``last.ckpt``: the latest weights, after every validation (every epoch, without validation), every
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
        ModelCheckpoint(dirpath, "last", None, every_n_epochs=1, **common),
        ModelCheckpoint(dirpath, "last", None, every_n_train_steps=every_n_train_steps or None,
                        every_n_epochs=None if every_n_train_steps else 0, save_on_exception=save_on_exception,
                        **common),
    ]


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
