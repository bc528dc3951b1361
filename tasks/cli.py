"""The command line every task shares: LightningCLI with Kestrel's links, checkpointing, shortcuts and ``export``."""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback, LearningRateMonitor, Timer
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.loggers import CSVLogger, Logger, TensorBoardLogger
from pytorch_lightning.plugins import CheckpointIO

from backbones._weights import refuse_non_finite

from .callbacks import AtomicCheckpointIO, DivergenceGuard, FitTimer, RunStopped, checkpoints
from .deploy.quantize import DEFAULT_KEEP_FLOAT, Calibration, KeepFloat
from .deploy.runtime import is_exported
from .reporting import PredictionWriter, ReportWriter


class KestrelArgumentParser(LightningArgumentParser):
    """Lightning's parser, whose command-line errors are one line with a suggestion (``did you mean
    --trainer.max_epochs?``) rather than 90 lines of usage ending in a nested report."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get(VERBOSE_ENV, "") not in ("", "0"):
            return super().error(message, ex)
        print(f"error: {parse_error(message, self)} (--help lists the options)", file=sys.stderr)
        self.exit(2)


def parse_error(message: str, parser: Any) -> str:
    """jsonargparse's report of a bad command line or config as one sentence: the innermost problem, with the
    closest known option where a name was mistyped."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    unknown = re.search(r"unrecognized arguments: (--[\w.]+)", message, re.IGNORECASE)
    if unknown:
        options = [o for action in parser._actions for o in action.option_strings if o.startswith("--")]
        return f"unknown option {unknown[1]}" + _did_you_mean(unknown[1], options)
    option = re.search(r"Option '(\w+)' is not accepted", message)
    key = re.search(r'Parser key "([\w.]+)"', message)
    if option and key:
        class_path = re.search(r"class_path '([\w.]+)'", message)
        known: list[str] = []
        if class_path:
            import importlib
            import inspect

            module, _, name = class_path[1].rpartition(".")
            with contextlib.suppress(Exception):
                known = list(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
        return (f"{key[1]} has no option {option[1]!r}"
                + _did_you_mean(option[1], known, prefix=f"--{key[1]}."))
    specific = [line for line in lines if not line.startswith(("Given value", "Subtypes", "Errors", "- Problem"))]
    return " ".join((specific or lines)[-2:])


def _check_config_files(args: Sequence[str]) -> None:
    """Each ``--config`` / ``-c`` file of a command line read as YAML first: a syntax error is one line naming the
    file and the place (jsonargparse's names a ``<unicode string>``)."""
    import yaml

    for flag, path in zip(args, args[1:]):
        if flag not in ("--config", "-c") or not Path(path).is_file():
            continue
        try:
            yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ValueError(f"config {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ValueError(f"config {path} is not valid YAML{where}: "
                             f"{getattr(err, 'problem', None) or str(err).splitlines()[0]}") from None


def _did_you_mean(name: str, known: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {prefix}{close[0]}?" if close else ""


class KestrelTrainer(pl.Trainer):
    """Lightning's Trainer with one more entry point, :meth:`export` (``python -m tasks.<task> export``),
    :meth:`predict` drawing the predictions on the images, and :meth:`fit` ending in an error when SIGTERM stops it."""

    def fit(self, model, train_dataloaders=None, val_dataloaders=None, datamodule=None, ckpt_path=None,
            weights_only=None):
        """Lightning's ``fit``; stopped by SIGTERM (a scheduler's or ``timeout``'s stop), which Lightning ends as if
        the run were done (exit status 0), it raises :class:`tasks.callbacks.RunStopped` (exit status 143) saying
        where ``last.ckpt`` is and how to resume."""
        from pytorch_lightning.utilities.exceptions import SIGTERMException

        try:
            return super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)
        except SIGTERMException:
            folders = {Path(c.dirpath) for c in self.checkpoint_callbacks if c.dirpath and c.save_on_exception}
            saved = [str(folder / "last.ckpt") for folder in sorted(folders) if (folder / "last.ckpt").is_file()]
            where = f"{saved[0]} holds its weights" if saved else "no checkpoint was written"
            raise RunStopped(f"fit stopped by SIGTERM at step {self.global_step} of "
                             f"{int(self.estimated_stepping_batches)}: {where}; resume with the same command and "
                             "--ckpt_path last", exit_code=143) from None

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
        for callback in self.callbacks:
            if isinstance(callback, PredictionWriter):
                callback.draw = draw
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)

    def export(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        ckpt_path: str | None = None,
        format: Literal["onnx", "openvino", "executorch", "tflite", "coreml"] = "onnx",
        int8: bool = False,
        output: str | None = None,
        calibration_images: int = 64,
        int8_calibration: Calibration = "percentile",
        int8_float: list[KeepFloat] = list(DEFAULT_KEEP_FLOAT),  # noqa: B006 - jsonargparse reads the default
        input_size: tuple[int, int] | None = None,
        int8_max_drop: float | None = None,
    ) -> Path:
        """Export the network with its pre- and post-processing, check it against PyTorch, print its path.

        Args:
            model: The task, with ``init_from`` weights if its config names them.
            datamodule: The data: its validation images check the export, its training images
                calibrate INT8.
            ckpt_path: The checkpoint to export (``best``, ``last`` or a path); the model's own weights if None.
            format: ``onnx`` (ONNX Runtime), ``openvino`` (OpenVINO IR, ``.xml`` + ``.bin``), ``executorch``
                (an ExecuTorch program, ``.pte``, lowered to XNNPACK), ``tflite`` (LiteRT) or ``coreml`` (a Core ML
                ``.mlpackage``); the last three for phones: batch 1 at a fixed input size.
            int8: Quantize to INT8 (static, calibrated on training images; Core ML: its weights only).
            output: Where to write (default: the run's ``export/`` folder).
            calibration_images: Training images INT8 calibrates on.
            int8_calibration: How INT8 sets activation ranges: ``percentile`` or ``minmax``.
            int8_float: Convolutions INT8 keeps in float: ``first_conv``, ``last_convs`` (ONNX and OpenVINO).
            input_size: A mobile file's fixed input, height and width (default: the model's input size).
            int8_max_drop: Post-training INT8 (onnx, openvino) with the fewest layers in float, chosen by measured
                sensitivity, that keep the validation metric within this much of the float model's (e.g. 0.005;
                replaces ``int8_float``). The file's metadata names them.
        """
        from .deploy.export import export_task

        return export_task(self, model, datamodule, ckpt_path, format, int8, output, calibration_images,
                           int8_calibration, int8_float, input_size, int8_max_drop)


def pair_input_size(args: Any) -> Any:
    """Command-line ``args`` with ``--input_size H W`` as ``--input_size [H,W]``; other args as they are."""
    if not isinstance(args, list) or "--input_size" not in args:
        return args
    args = list(args)
    at = args.index("--input_size")
    values = args[at + 1: at + 3]
    if len(values) == 2 and all(value.isdigit() for value in values):
        args[at + 1: at + 3] = [f"[{values[0]},{values[1]}]"]
    return args


class KestrelCLI(LightningCLI):
    """LightningCLI with data properties linked to the model, checkpoints on a validation metric, and the
    task's report and prediction writers.

    ``fit`` keeps ``best.ckpt`` by ``monitor`` and ``last.ckpt`` (:func:`tasks.callbacks.checkpoints`, options
    ``checkpoint.*``). Every subcommand accepts ``--ckpt_path best`` or ``last``: the newest such file under
    ``trainer.default_root_dir``'s runs. ``fit`` resumes from it (weights, optimizer, schedule, step) and keeps
    writing checkpoints beside it, so that ``best.ckpt`` is replaced only by a better one; ``validate``,
    ``test`` and ``predict`` also take an exported file (``.onnx``, OpenVINO ``.xml``) and run it in its
    runtime. ``test`` writes the report (:class:`tasks.reporting.ReportWriter`), ``predict`` the predictions
    (``writer``).

    Args:
        model_class: The task's LightningModule.
        datamodule_class: Its LightningDataModule.
        monitor: Validation metric to keep the best checkpoint by (higher is better).
        links: Data-module attributes that are model arguments: ``{"data.x": "model.y"}``.
        writer: The task's prediction writer.
        args: Command-line arguments; ``sys.argv`` if None.
    """

    def __init__(self, model_class, datamodule_class, monitor: str, links: dict[str, str],
                 writer: type[PredictionWriter], args: list[str] | None = None):
        self.monitor = monitor
        self.links = links
        self.writer = writer
        self.exported_path: str | None = None  # an exported file given as --ckpt_path, run instead of the model
        self._resumed: tuple[str, dict[str, Any]] | None = None  # fit --ckpt_path: the model options asked for
        super().__init__(
            model_class,
            datamodule_class,
            trainer_class=KestrelTrainer,
            parser_class=KestrelArgumentParser,
            args=args,
            seed_everything_default=0,
            save_config_kwargs={"overwrite": True},
        )

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}

    def add_arguments_to_parser(self, parser) -> None:
        for action in parser._actions:  # argparse keeps its actions in this list; there is no public accessor
            if action.dest == "model.backbone" and hasattr(action, "extra_help"):
                # jsonargparse would list every importable nn.Module subclass (2,000 lines) and no backbone
                action.extra_help = _backbone_help
        for source, target in self.links.items():
            parser.link_arguments(source, target, apply_on="instantiate")
        parser.add_function_arguments(checkpoints, "checkpoint")
        parser.set_defaults({"checkpoint.monitor": self.monitor})

    def parse_arguments(self, parser, args) -> None:
        """Lightning's parsing, then ``--ckpt_path`` made a file: ``best`` / ``last`` resolved (before Lightning
        reads the checkpoint's hyperparameters into the config), an exported file set aside to be run in its
        runtime, and a file that is no checkpoint of this task one clear error. ``--input_size H W`` is read as
        ``--input_size [H,W]`` (jsonargparse takes one value per option)."""
        if args is None:
            sys.argv[1:] = pair_input_size(sys.argv[1:])
        given = list(sys.argv[1:] if args is None else args) if not isinstance(args, dict) else []
        _check_config_files(given)
        super().parse_arguments(parser, pair_input_size(args))
        subcommand = self.config.get("subcommand")
        if subcommand not in ("fit", "validate", "test", "predict", "export"):
            return
        config = self.config[subcommand]
        name = config.get("ckpt_path")
        if name in ("best", "last"):
            config.ckpt_path = str(find_checkpoint(name, config.trainer.default_root_dir))
            print(f"{'Resuming from' if subcommand == 'fit' else 'Using'} checkpoint {config.ckpt_path}")
        elif name is not None and not (Path(name).is_file() or is_exported(name) and Path(name).exists()):
            raise FileNotFoundError(f"--ckpt_path {name}: no such file")  # (a Core ML package is a folder)
        path = config.ckpt_path
        if path is None:
            return
        if is_exported(path):
            if subcommand == "export":
                raise ValueError(f"--ckpt_path {path} is already exported; export a checkpoint")
            self.exported_path, config.ckpt_path = path, None  # it holds no hyperparameters for Lightning to read
            return
        folder = Path(path).parent
        if subcommand == "fit" and config.checkpoint.get("dirpath") is None and folder.name == "checkpoints":
            # the resumed run's checkpoints stay with the ones it continues: its best.ckpt is replaced only by a
            # better one (ModelCheckpoint restores its best score where the folder is the same)
            config.checkpoint.dirpath = str(folder)
        self._check_checkpoint(subcommand, path)
        if subcommand == "fit":  # what the command line asks of the model, to hold against the checkpoint's
            asked = {key: _get(config.model, key) for key in _model_options(given)}
            # a data option linked to a model option (data.image_size -> model.image_size) asks it of the model too
            for source, target in self.links.items():
                if any(arg == f"--{source}" or arg.startswith(f"--{source}=") for arg in given):
                    asked[target.removeprefix("model.")] = _get(config, source)
            self._resumed = (path, asked)

    def _check_checkpoint(self, subcommand: str, path: str) -> None:
        """A truncated or foreign file, or another task's checkpoint, as one sentence naming the file: the
        checkpoint's hyperparameters parsed as Lightning parses them next, its errors kept."""
        import torch
        from jsonargparse import ArgumentError

        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for "not a checkpoint"
            reason = str(err).split(". ")[0]
            raise ValueError(f"checkpoint {path!r} cannot be read: truncated, or not a PyTorch checkpoint "
                             f"({type(err).__name__}: {reason})") from None
        refuse_non_finite(checkpoint.get("state_dict", {}), f"the weights of checkpoint {path!r}")
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
        if not hparams:
            return
        exit_on_error, self.parser.exit_on_error = self.parser.exit_on_error, False
        try:
            self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except ArgumentError as err:
            text = str(err)
            head = re.search(r"Expected '([\w.]+)' to be a subclass of <class '([\w.]+)'>", text)
            reason = (f"its head is {head[1]}, this task's a {head[2]} (a checkpoint of another task?)" if head
                      else text.splitlines()[-1].strip().split(". Got value")[0])
            raise ValueError(f"checkpoint {path!r} does not hold a {self.model_class.__name__}: {reason}") from None
        finally:
            self.parser.exit_on_error = exit_on_error

    def _check_resumed_model(self) -> None:
        """``fit --ckpt_path`` continues the checkpoint's model: Lightning has put the checkpoint's model options into
        the config. One that the command line gave otherwise is an error if it makes another model (backbone, head,
        classes, input size, quantization) or belongs to the optimizer or its schedule (whose states the checkpoint
        restores, so a new value would not be used); any other (a loss weight, an evaluation setting) takes the
        command line's value, and says so. Trainer options (``max_epochs``, ``max_steps``) are Lightning's to
        change."""
        path, asked = self._resumed
        model = self.config["fit"].model
        for key, value in asked.items():
            theirs = _get(model, key)
            if _plain(theirs) == _plain(value):
                continue
            kept = RESUMED_KEPT.get(key.split(".")[0])
            if kept:
                raise ValueError(f"fit --ckpt_path {path}: the checkpoint's run has model.{key} {_plain(theirs)!r}, "
                                 f"the command line asks for {_plain(value)!r}; a resumed run keeps {kept}. To train "
                                 f"on from these weights otherwise, start a new run with --model.init_from {path}")
            print(f"Resuming with model.{key} {_plain(value)!r} (the checkpoint's run had {_plain(theirs)!r})")
            parent = _get(model, key.rpartition(".")[0]) if "." in key else model
            parent[key.rpartition(".")[2]] = value

    def before_instantiate_classes(self) -> None:
        """With ``model.init_from`` every weight comes from that file: the backbone's own ``pretrained``
        weights would only be overwritten, so they are not loaded (nor fetched, offline). A resumed fit keeps the
        checkpoint's model (:meth:`_check_resumed_model`)."""
        if getattr(self, "_resumed", None):
            self._check_resumed_model()
        subcommand = self.config.get("subcommand")
        model = (self.config[subcommand] if subcommand else self.config).get("model")
        backbone = model.get("backbone") if model is not None else None
        init_args = backbone.get("init_args") if hasattr(backbone, "get") else None
        if model is not None and model.get("init_from") and init_args is not None and init_args.get("pretrained"):
            print(f"model.backbone.pretrained {init_args.pretrained} is not loaded: model.init_from "
                  f"{model.init_from} holds every weight")
            init_args.pretrained = False

    def instantiate_trainer(self, **kwargs) -> pl.Trainer:
        """The trainer, logging by default to CSV and TensorBoard in the same ``version_N`` folder, with the
        subcommand's callbacks: ``fit`` its checkpoints, the learning rate logged every step, the fit timed
        (:class:`tasks.callbacks.FitTimer`) and stopped when it diverges (:class:`tasks.callbacks.DivergenceGuard`);
        ``test`` the report writer; ``predict`` the prediction writer. Checkpoints are written atomically
        (:class:`tasks.callbacks.AtomicCheckpointIO`)."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = config.get("trainer") or {}
        loggers = trainer.get("logger")
        if loggers is None or loggers is True:
            root = trainer.get("default_root_dir") or os.getcwd()
            kwargs["logger"] = loggers = default_loggers(root)
        callbacks: list[Callback] = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if "checkpoint" in config:  # every subcommand has them: a checkpoint's callback states find them there
            options = config["checkpoint"].as_dict()
            if self.subcommand != "fit":  # they save nothing, but ModelCheckpoint would save when a test fails
                options["save_on_exception"] = False
            callbacks += checkpoints(**options)
        if self.subcommand == "fit" and loggers and not any(isinstance(c, LearningRateMonitor) for c in callbacks):
            callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "fit" and not any(isinstance(c, DivergenceGuard) for c in callbacks):
            callbacks.append(DivergenceGuard())
        plugins = trainer.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):  # the user's own writer stays theirs
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if self.subcommand == "test":
            callbacks.append(ReportWriter())
        elif self.subcommand == "predict":
            callbacks.append(self.writer())
        # Every subcommand has it, as Lightning asks of a checkpoint's stateful callbacks; it enforces max_time
        # in the place of the Timer Lightning would add.
        if not any(isinstance(c, Timer) for c in callbacks):
            callbacks.append(FitTimer(trainer.get("max_time")))
            kwargs["max_time"] = None
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def _run_exported(self) -> None:
        if self.exported_path is not None:
            self.model.use_exported(self.exported_path)

    def before_validate(self) -> None:
        self._run_exported()

    def before_test(self) -> None:
        self._run_exported()

    def before_predict(self) -> None:
        self._run_exported()


#: model options a resumed fit refuses to change, and what it keeps by that: those that make another network, and
#: those whose state the checkpoint restores (the optimizer's learning rate, the schedule)
RESUMED_KEPT = {
    **dict.fromkeys(("backbone", "head", "class_names", "category_ids", "num_classes", "image_size", "keypoint_names",
                     "quantization"), "its model"),
    **dict.fromkeys(("optimizer", "scheduler", "norm_weight_decay"), "its optimizer and learning-rate schedule"),
}


def _model_options(args: Sequence[str]) -> list[str]:
    """The ``--model.*`` options a command line gives, as keys below ``model`` (``backbone.name``)."""
    keys = []
    for arg in args:
        if isinstance(arg, str) and arg.startswith("--model."):
            key = arg.removeprefix("--model.").split("=", 1)[0]
            if key and key not in keys:
                keys.append(key)
    return keys


def _get(namespace: Any, key: str) -> Any:
    """``namespace``'s value at a dotted ``key``, also where a component's options sit under its ``init_args``
    (``backbone.name`` is ``backbone.init_args.name``); None where there is none."""
    value = namespace
    for part in key.split("."):
        if not hasattr(value, "get"):
            return None
        inner = value.get("init_args")
        value = value.get(part) if value.get(part) is not None or not hasattr(inner, "get") else inner.get(part)
        if value is None:
            return None
    return value


def _plain(value: Any) -> Any:
    """A config value as plain data, to compare and print (jsonargparse's namespaces as dicts)."""
    return value.as_dict() if hasattr(value, "as_dict") else value


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
    except RunStopped as err:  # a run that ended early: the last checkpoint is saved, the status says so
        if verbose:
            raise
        print(f"error: {err} (--verbose shows the traceback)", file=sys.stderr)
        return err.exit_code
    except USER_ERRORS as err:
        if verbose:
            raise
        print(f"error: {user_message(err)} (--verbose shows the traceback)", file=sys.stderr)
        return 1
    return 0
