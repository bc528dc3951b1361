"""The command line every task shares: LightningCLI with Kestrel's links, checkpointing, shortcuts and ``export``."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, Timer
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger

from .quantize import DEFAULT_KEEP_FLOAT, Calibration, KeepFloat
from .report import duration
from .runtime import is_exported


class KestrelTrainer(pl.Trainer):
    """Lightning's Trainer with one more entry point, :meth:`export` (``python -m tasks.<task> export``), and
    :meth:`predict` drawing the predictions on the images."""

    draw_predictions = True

    def predict(self, model=None, dataloaders=None, datamodule=None, return_predictions=None, ckpt_path=None,
                weights_only=None, draw: bool = True):
        """Lightning's ``predict``: Kestrel's tasks write their predictions into the run's ``predictions/``
        folder (COCO results JSON, or label PNGs) and, with ``draw``, each image with its predictions drawn
        on it (boxes with class names and scores, label overlays with a legend, skeletons) into
        ``predictions/images/``.

        Args:
            model: The task.
            dataloaders: Images to predict on (default: the data module's ``predict_dir`` or validation split).
            datamodule: The data.
            return_predictions: Whether to return what ``predict_step`` returns.
            ckpt_path: The checkpoint (``best``, ``last``, a path, or an exported file).
            weights_only: Lightning's ``torch.load`` setting.
            draw: Write the images with their predictions drawn (``false``: the result files only).
        """
        self.draw_predictions = draw
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)

    def export(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        format: Literal["onnx", "openvino"] = "onnx",
        int8: bool = False,
        output: str | None = None,
        calibration_images: int = 64,
        int8_calibration: Calibration = "percentile",
        int8_float: list[KeepFloat] = list(DEFAULT_KEEP_FLOAT),  # noqa: B006 - jsonargparse reads the default
    ) -> Path:
        """Export the network with its pre- and post-processing, check it against PyTorch, print its path.

        Args:
            model: The task, with ``init_from`` weights if its config names them.
            datamodule: The data: its validation images check the export, its training images
                calibrate INT8.
            ckpt_path: The checkpoint to export (``best``, ``last`` or a path); the model's own weights if None.
            format: ``onnx`` (ONNX Runtime) or ``openvino`` (OpenVINO IR, ``.xml`` + ``.bin``).
            int8: Quantize to INT8 (static, calibrated on training images).
            output: Where to write (default: the run's ``export/`` folder).
            calibration_images: Training images INT8 calibrates on.
            int8_calibration: How INT8 sets activation ranges: ``percentile`` or ``minmax``.
            int8_float: Convolutions INT8 keeps in float: ``first_conv``, ``last_convs``.
        """
        from .export import export_task

        model.trainer = self  # as fit and test connect them: the task may read its data module
        self._data_connector.attach_datamodule(model, datamodule=datamodule)
        return export_task(self, model, datamodule, ckpt_path, format, int8, output, calibration_images,
                           int8_calibration, int8_float)


class KestrelCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` with the two files kept apart: ``best.ckpt`` (the top-k by
    ``monitor``) is written only when validation has just measured the weights it holds, and
    ``last.ckpt`` every ``every_n_train_steps`` training steps and after every validation, so that a
    crash costs at most the steps since the last one (``fit --ckpt_path last`` resumes).

    Lightning's own callback saves its top-k at step checkpoints too, scored by the last validation
    metric, so that ``best.ckpt`` could hold weights from steps after the ones its score measured.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        every = self._every_n_train_steps
        if every >= 1 and trainer.global_step % every == 0 and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        batches = trainer.num_val_batches
        validates = sum(batches) if isinstance(batches, list) else batches
        if not self._skip(trainer) and not validates:  # no validation to wait for
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._skip(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """A run that fails (a bad file found while training, an interrupt) still leaves ``last.ckpt``, if it
        trained a step (before that, the checkpoint folder is not even chosen)."""
        if not self._skip(trainer) and trainer.global_step > 0 and self.dirpath is not None:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @staticmethod
    def _skip(trainer) -> bool:
        from pytorch_lightning.trainer.states import TrainerFn

        return bool(trainer.fast_dev_run) or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking


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


class KestrelCLI(LightningCLI):
    """LightningCLI with data properties linked to the model, and checkpoints on a validation metric.

    :class:`KestrelCheckpoint` (``checkpoint.*``) keeps ``best.ckpt`` by ``monitor`` and ``last.ckpt``
    every ``checkpoint.every_n_train_steps`` steps. Every subcommand accepts ``--ckpt_path best`` or
    ``last``: the newest such file under ``trainer.default_root_dir``'s runs. ``fit`` resumes from it
    (weights, optimizer, schedule, step) and keeps writing checkpoints beside it, so that ``best.ckpt``
    is replaced only by a better one; ``validate``, ``test`` and ``predict`` also take an exported file
    (``.onnx``, OpenVINO ``.xml``) and run it in its runtime.

    Args:
        model_class: The task's LightningModule.
        datamodule_class: Its LightningDataModule.
        monitor: Validation metric to keep the best checkpoint by (higher is better).
        links: Data-module attributes that are model arguments: ``{"data.x": "model.y"}``.
        args: Command-line arguments; ``sys.argv`` if None.
    """

    def __init__(self, model_class, datamodule_class, monitor: str, links: dict[str, str],
                 args: list[str] | None = None):
        self.monitor = monitor
        self.links = links
        super().__init__(
            model_class,
            datamodule_class,
            trainer_class=KestrelTrainer,
            args=args,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        for action in parser._actions:
            if action.dest == "model.backbone" and hasattr(action, "extra_help"):
                # jsonargparse would list every importable nn.Module subclass (2,000 lines) and no backbone
                action.extra_help = _backbone_help
        for source, target in self.links.items():
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_lightning_class_args(KestrelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": self.monitor,
            "checkpoint.mode": "max",
            "checkpoint.filename": "best",
            "checkpoint.save_last": True,
            "checkpoint.every_n_train_steps": 500,
            "checkpoint.auto_insert_metric_name": False,
        })

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        """The trainer, logging by default to CSV and TensorBoard in the same ``version_N`` folder, with the
        learning rate logged every step and the fit timed (:class:`FitTimer`)."""
        config = self._get(self.config_init, "trainer", default={})
        loggers = config.get("logger")
        if loggers is None or loggers is True:
            root = config.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = loggers = default_loggers(root)
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if loggers and self.subcommand == "fit" and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        # Every subcommand has it, as Lightning asks of a checkpoint's stateful callbacks; it enforces max_time
        # in the place of the Timer Lightning would add.
        if not any(isinstance(c, Timer) for c in callbacks):
            callbacks.append(FitTimer(config.get("max_time")))
            kwargs["max_time"] = None
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _parse_ckpt_path(self) -> None:
        """Resolve ``best`` / ``last`` first, so that their hyperparameters are read as a path's are; an
        exported file has none to read; a file that is no checkpoint of this task is one clear error."""
        subcommand = self.config.get("subcommand")
        if subcommand not in ("fit", "validate", "test", "predict", "export"):
            return super()._parse_ckpt_path()
        config = self.config[subcommand]
        name = config.get("ckpt_path")
        if name in ("best", "last"):
            config.ckpt_path = str(find_checkpoint(name, config.trainer.default_root_dir))
            print(f"{'Resuming from' if subcommand == 'fit' else 'Using'} checkpoint {config.ckpt_path}")
        elif name is not None and not Path(name).is_file():
            raise FileNotFoundError(f"--ckpt_path {name}: no such file")
        path = config.ckpt_path
        if path is None:
            return None
        if is_exported(path):
            if subcommand == "export":
                raise ValueError(f"--ckpt_path {path} is already exported; export a checkpoint")
            return None
        folder = Path(path).parent
        if subcommand == "fit" and config.checkpoint.get("dirpath") is None and folder.name == "checkpoints":
            # the resumed run's checkpoints stay with the ones it continues: its best.ckpt is replaced only by a
            # better one (ModelCheckpoint restores its best score where the folder is the same)
            config.checkpoint.dirpath = str(folder)
        return self._read_checkpoint(path)

    def _read_checkpoint(self, path: str) -> None:
        """Lightning's reading of the checkpoint's hyperparameters into the config, with a truncated or foreign
        file, or another task's checkpoint, as one sentence naming the file."""
        import torch
        from jsonargparse import ArgumentError

        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for "not a checkpoint"
            reason = str(err).split(". ")[0]
            raise ValueError(f"checkpoint {path!r} cannot be read: truncated, or not a PyTorch checkpoint "
                             f"({type(err).__name__}: {reason})") from None
        exit_on_error, self.parser.exit_on_error = self.parser.exit_on_error, False
        try:
            super()._parse_ckpt_path()
        except ArgumentError as err:
            text = str(err)
            head = re.search(r"Expected '([\w.]+)' to be a subclass of <class '([\w.]+)'>", text)
            reason = (f"its head is {head[1]}, this task's a {head[2]} (a checkpoint of another task?)" if head
                      else text.splitlines()[-1].strip().split(". Got value")[0])
            raise ValueError(f"checkpoint {path!r} does not hold a {self.model_class.__name__}: {reason}") from None
        finally:
            self.parser.exit_on_error = exit_on_error

    def before_instantiate_classes(self) -> None:
        """With ``model.init_from`` every weight comes from that file: the backbone's own ``pretrained``
        weights would only be overwritten, so they are not loaded (nor fetched, offline)."""
        subcommand = self.config.get("subcommand")
        model = (self.config[subcommand] if subcommand else self.config).get("model")
        backbone = model.get("backbone") if model is not None else None
        init_args = backbone.get("init_args") if hasattr(backbone, "get") else None
        if model is not None and model.get("init_from") and init_args is not None and init_args.get("pretrained"):
            print(f"model.backbone.pretrained {init_args.pretrained} is not loaded: model.init_from "
                  f"{model.init_from} holds every weight")
            init_args.pretrained = False

    def _run_exported(self) -> None:
        kwargs = self.config_init[self.subcommand]
        if is_exported(kwargs.get("ckpt_path")):
            self.model.use_exported(kwargs["ckpt_path"])
            kwargs["ckpt_path"] = None

    def before_validate(self) -> None:
        self._run_exported()

    def before_test(self) -> None:
        self._run_exported()

    def before_predict(self) -> None:
        self._run_exported()


def _backbone_help() -> str:
    from backbones import list_backbones

    return (f"; model.backbone.name: one of {', '.join(list_backbones())}, or timm:<model_name>; or any "
            "backbones.Pyramid module by class_path")


def default_loggers(root: str | Path) -> list[Logger]:
    """CSV and TensorBoard logs in one ``<root>/lightning_logs/version_N`` folder, the next free one (built
    apart, each of Lightning's loggers would pick the next free version itself, the second one after the
    first's)."""
    table = CSVLogger(root)
    return [table, TensorBoardLogger(root, version=table.version, default_hp_metric=False)]


def find_checkpoint(name: str, root: str | Path) -> Path:
    """The newest ``{name}.ckpt`` (``best`` or ``last``) under ``root``'s runs."""
    root = Path(root)
    found = sorted(root.glob(f"**/checkpoints/{name}.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(
            f"--ckpt_path {name}: no {name}.ckpt under {root.resolve()}; train first (fit) or give a path"
        )
    return found[-1]


# What a user's data, config, weights or checkpoint can cause: Kestrel raises these with a sentence that
# names the file and the problem.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
VERBOSE_ENV = "KESTREL_VERBOSE"


def user_message(error: BaseException) -> str:
    """The sentence that says what is wrong, as one line: the innermost cause of ``error`` (jsonargparse
    wraps a class's own error in "Does not validate against any of the Union subtypes"), and of an error
    re-raised from a loader worker, its original last line."""
    root = error
    while isinstance(root.__cause__, USER_ERRORS):
        root = root.__cause__
    lines = [line.strip() for line in str(root).splitlines() if line.strip()]
    if "Original Traceback" in str(root) and lines:
        last = lines[-1]
        return last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith(("Error", "Exception")) else last
    return " ".join(lines) or type(root).__name__


def main(cli_main: Callable[[list[str] | None], object], argv: Sequence[str] | None = None) -> int:
    """``python -m tasks.<task>``: a user's mistake (bad data, config, weights or checkpoint) ends the command
    with one line naming the file and the problem, and exit status 1; ``--verbose`` (or ``KESTREL_VERBOSE=1``)
    shows the traceback instead."""
    given = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in given or os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    given = [a for a in given if a != "--verbose"]
    if argv is None:  # LightningCLI reads sys.argv itself (and warns when given both)
        sys.argv[1:] = given
    try:
        cli_main(None if argv is None else given)
    except USER_ERRORS as err:
        if verbose:
            raise
        print(f"error: {user_message(err)} (--verbose shows the traceback)", file=sys.stderr)
        return 1
    return 0
