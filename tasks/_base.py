"""What every Kestrel task module shares: optimization, ``init_from``, self-describing checkpoints, and
per-image evaluation results from the network or from an exported file."""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import subprocess
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import yaml
from matplotlib.figure import Figure
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities.parsing import collect_init_args
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import Backbone, ensure_pyramid, inference_copy
from backbones._weights import load_weights, read_state_dict

from . import plots
from .metrics import gather_by_index
from .optim import SchedulerCallable, TrainingLength, param_groups
from .report import duration
from .runtime import ExportedModel, file_size_mb, load_exported, run_images

log = logging.getLogger(__name__)

# Detections and poses scoring at least this are drawn (predict's images, the reports' samples, TensorBoard).
DRAW_SCORE = 0.3

# Lightning rebuilds a task from a checkpoint's hyperparameters with this (jsonargparse, as the CLI does).
INSTANTIATOR = "pytorch_lightning.cli.instantiate_module"


def _import_path(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def describe(value: Any) -> Any:
    """A task argument as the config that rebuilds it: what LightningCLI stores for tasks it builds, for
    tasks built in Python. A module or callable that cannot be described is returned as it is."""
    if isinstance(value, Backbone):
        return {"class_path": _import_path(Backbone), "init_args": dict(value.init_args)}
    if isinstance(value, functools.partial):
        # functools.partial(cls, **kw), or jsonargparse's partial(..., instantiator, cls, **kw)
        target = next((a for a in (value.func, *value.args[::-1]) if inspect.isclass(a)), value.func)
        if inspect.isclass(target) or inspect.isfunction(target):
            return {"class_path": _import_path(target), "init_args": dict(value.keywords)}
    if inspect.isclass(value) or (inspect.isfunction(value) and "<" not in value.__qualname__):
        return _import_path(value) if inspect.isfunction(value) else {"class_path": _import_path(value)}
    return value


def checkpoint_backbone(path: str) -> str | None:
    """The backbone name a Kestrel checkpoint was trained with, or None (a bare state dict, another file)."""
    try:
        hparams = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
        return hparams["backbone"]["init_args"]["name"]
    except Exception:  # noqa: BLE001 - anything else has no name to give
        return None


class KestrelTask(pl.LightningModule):
    """Base of the task modules: the model lives in ``self.model``.

    Optimizer parameter groups keep norm weights and biases out of weight decay; the scheduler is
    stepped every optimizer step and told the training length. ``init_from`` is loaded at setup, so
    a ``--ckpt_path`` restored afterwards wins.

    Checkpoints describe themselves: the task's arguments (the config LightningCLI parsed, or for a
    task built in Python a description of its modules) are its hyperparameters, so
    ``Task.load_from_checkpoint(path)`` rebuilds it with no config and no data. A checkpoint never asks
    for ImageNet weights again (``backbone.pretrained`` is stored false) nor for ``init_from``.

    Evaluation: the network predicts (:meth:`predict_images`: uint8 images in, decoded outputs per
    image, from ``self.model`` or, after :meth:`use_exported`, from an exported file in its runtime);
    a subclass's :meth:`collect` stores per-image results of a batch with :meth:`keep`;
    :meth:`gathered` merges them across processes (each image counted once) and :meth:`evaluate`
    turns them into metrics, logged as ``val/*`` and ``test/*`` (``main_metric`` on the progress bar);
    ``test`` then writes the report through :meth:`write_report` and prints where it is.

    Args:
        optimizer: Builds the optimizer from parameter groups.
        scheduler: Builds the schedule from the optimizer and the training length.
        norm_weight_decay: Weight decay of norm weights and biases (None: the optimizer's).
        init_from: Weights for the whole model (a Kestrel checkpoint or state dict).
        channels_last: Train in channels-last memory (faster convolutions), and keep the inference copy
            that evaluates and predicts (:func:`backbones.inference_copy`: batch norms folded) in it too.
    """

    main_metric = "map"  # on the progress bar; each task sets its own
    task = ""  # detect, segment, pose: the name exported files carry

    def __init__(
        self,
        optimizer: OptimizerCallable,
        scheduler: SchedulerCallable,
        norm_weight_decay: float | None,
        init_from: str | None,
        channels_last: bool = True,
    ):
        super().__init__()
        self._save_arguments(inspect.currentframe())
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.norm_weight_decay = norm_weight_decay
        self.init_from = init_from
        self.channels_last = channels_last
        self.exported: ExportedModel | None = None
        self._inference: nn.Module | None = None  # the network as evaluation runs it
        self._initialized = False
        self._results: dict[int, Any] = {}
        self._started = 0.0
        self._drawing: Path | None = None

    def _save_arguments(self, frame) -> None:
        """The task's arguments (the subclass's too) as its hyperparameters: LightningCLI's parsed config
        when it builds the task, else a description of what was passed in Python."""
        # LightningCLI hands its config over in this context variable (pytorch_lightning.cli._InstantiatorFn)
        if _given_hyperparameters.get() is not None:
            self.save_hyperparameters(frame=frame)
            return
        arguments: dict[str, Any] = {}
        for args in collect_init_args(frame, [], classes=(KestrelTask,)):
            arguments.update(args)
        described = {k: describe(v) for k, v in arguments.items()}
        lost = [k for k, v in described.items() if isinstance(v, nn.Module) or callable(v)]
        if lost:
            log.debug("%s: %s cannot be described; load_from_checkpoint will need them", type(self).__name__, lost)
        kept = {k: v for k, v in described.items() if k not in lost}
        self.save_hyperparameters({**kept, "_instantiator": INSTANTIATOR}, frame=frame)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint holds every weight: rebuilding it needs neither ImageNet weights nor ``init_from``."""
        hparams = dict(checkpoint.get("hyper_parameters", {}))
        backbone = hparams.get("backbone")
        if isinstance(backbone, dict):
            backbone = dict(backbone)
            if isinstance(backbone.get("init_args"), dict):
                backbone["init_args"] = {**backbone["init_args"], "pretrained": False}
            elif "name" in backbone:
                backbone["pretrained"] = False
            hparams["backbone"] = backbone
        if "init_from" in hparams:
            hparams["init_from"] = None
        checkpoint["hyper_parameters"] = hparams

    def set_classes(self, class_names: list[str], category_ids: list[int] | None) -> None:
        """Labels 1..K: their names and the data set's category ids (1..K if None)."""
        if category_ids is not None and len(category_ids) != len(class_names):
            raise ValueError(f"{len(category_ids)} category ids for {len(class_names)} class names")
        self.class_names = list(class_names)
        self.category_ids = list(category_ids or range(1, len(class_names) + 1))
        self.num_classes = len(self.class_names)

    def metadata(self) -> dict[str, Any]:
        """What using the network needs besides its weights: task, input size, class names and ids (pose:
        keypoint names). Exported files carry it (see ``tasks.export``)."""
        return {"task": self.task, "input_size": [self.image_size, self.image_size], "class_names": self.class_names,
                "category_ids": self.category_ids}

    @staticmethod
    def pyramid(backbone: nn.Module) -> nn.Module:
        """The task's backbone, checked: one built by name already is; one given by ``class_path`` (any
        importable module) must satisfy the pyramid contract, or the error says what it lacks."""
        if isinstance(backbone, Backbone):
            return backbone
        kind = type(backbone)
        return ensure_pyramid(backbone, f"model.backbone {kind.__module__}.{kind.__qualname__}")

    def setup(self, stage: str) -> None:
        if self.init_from and not self._initialized:
            self.load_init_weights(self.init_from)
        self._initialized = True
        if stage == "fit" and self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def load_init_weights(self, path: str) -> None:
        """Load ``init_from`` strictly; a Lightning checkpoint of the task loses its ``model.`` prefix. Weights
        that do not fit name the backbone of the checkpoint they come from, where it says."""
        try:
            load_weights(self.model, self.convert_init_weights(path, self.init_state_dict(path)), repr(path))
        except ValueError as err:
            theirs, ours = checkpoint_backbone(path), next(
                (m.name for m in self.model.modules() if isinstance(m, Backbone)), None)
            if theirs and ours and theirs != ours:
                raise ValueError(f"weights {path!r} are a checkpoint of backbone {theirs!r}, this model's backbone is "
                                 f"{ours!r} (model.backbone.name): {str(err).split(': ', 1)[-1][:300]}") from None
            raise

    @staticmethod
    def init_state_dict(path: str) -> dict[str, torch.Tensor]:
        state = read_state_dict(path)
        if state and all(k.startswith("model.") for k in state):
            state = {k.removeprefix("model."): v for k, v in state.items()}
        return state

    def convert_init_weights(self, path: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for weights in another library's layout (detection: torchvision's SSDLite)."""
        return state

    def configure_optimizers(self):
        optimizer = self.optimizer(param_groups(self.model, self.norm_weight_decay))
        steps = int(self.trainer.estimated_stepping_batches)
        epochs = max(self.trainer.max_epochs or 1, 1)
        scheduler = self.scheduler(optimizer, TrainingLength(steps, max(steps // epochs, 1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------- prediction
    def use_exported(self, path: str | Path, threads: int | None = None) -> None:
        """Evaluate and predict with an exported file in its runtime instead of ``self.model``."""
        exported = load_exported(path, self.task, threads)
        mine = {k: v for k, v in self.metadata().items() if k in ("input_size", "class_names", "category_ids",
                                                                   "keypoint_names")}
        theirs = {k: exported.metadata.get(k) for k in mine}
        if theirs != mine:
            differ = [k for k in mine if theirs[k] != mine[k]]
            raise ValueError(f"exported model {str(path)!r} was made for other data: its {', '.join(differ)} "
                             f"{[theirs[k] for k in differ]} differ from this run's {[mine[k] for k in differ]}")
        self.exported = exported

    def predict_images(self, images: torch.Tensor | list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per image, the network's decoded outputs (``self.model``, or the exported file in use)."""
        if self.exported is not None:
            return [{k: v.to(self.device) for k, v in r.items()} for r in run_images(self.exported, images)]
        return run_images(self._inference or self.model, images)

    def _start_evaluation(self) -> None:
        """Per-image results start afresh; the network is copied for inference with the weights of now."""
        self._results = {}
        copy = inference_copy(self.model, self.channels_last) if self.exported is None else None
        object.__setattr__(self, "_inference", copy)  # not a submodule: no checkpoint, device move or DDP sync

    # per-image results of validate / test / predict
    def keep(self, index: int, result: Any) -> None:
        self._results[index] = result

    def gathered(self) -> dict[int, Any]:
        return gather_by_index(self._results)

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation()

    def on_train_epoch_start(self) -> None:
        object.__setattr__(self, "_inference", None)  # the weights it copied are changing

    def on_test_epoch_start(self) -> None:
        self._start_evaluation()
        self._started = time.perf_counter()

    def on_predict_epoch_start(self) -> None:
        self._start_evaluation()
        draw = getattr(self.trainer, "draw_predictions", True)
        self._drawing = Path(self.log_dir()) / "predictions" / "images" if draw else None
        if self._drawing is not None:
            self._drawing.mkdir(parents=True, exist_ok=True)

    @property
    def drawing(self) -> Path | None:
        """Where ``predict`` writes each image with its predictions drawn; None with ``predict --draw false``."""
        return self._drawing

    def drawing_note(self) -> str:
        """What ``predict`` drew, for the line it prints."""
        if self._drawing is None:
            return ""
        count = sum(1 for f in self._drawing.iterdir() if f.is_file())
        return f"; drawn on each image: {self._drawing} ({count} files)"

    # evaluation, shared by every task
    def collect(self, batch) -> Any:
        """Predict a batch and :meth:`keep` each image's result."""
        raise NotImplementedError

    def evaluate(self, split: Any, results: dict[int, Any]) -> dict:
        """The metrics of a split's gathered ``results``."""
        raise NotImplementedError

    def write_report(self, log_dir: str, split: Any, results: dict[int, Any], metrics: dict, seconds: float) -> Path:
        """Write ``report/`` (numbers, plots, the run's details) into ``log_dir``; return the folder."""
        raise NotImplementedError

    def samples(self, split: Any, results: dict[int, Any]) -> Figure:
        """Ground truth beside predictions on a few of the split's images (the report, TensorBoard)."""
        raise NotImplementedError

    def learning_curves(self) -> dict[str, Figure]:
        """``{"learning_curves": figure}`` of the training that made the weights evaluated, read from its
        ``metrics.csv`` (:func:`training_logs`); empty when there is none (weights from elsewhere, no CSV log)."""
        logs = self.training_logs()
        figure = plots.learning_curves(logs, self.main_metric) if logs else None
        return {"learning_curves": figure} if figure is not None else {}

    def training_logs(self) -> list[Path]:
        """The ``metrics.csv`` files of the training that made the weights evaluated (:func:`training_logs`)."""
        return training_logs(self.trainer, self.exported.metadata.get("checkpoint") if self.exported else None)

    def validation_step(self, batch, batch_idx: int) -> None:
        self.collect(batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self.collect(batch)

    def _log_metrics(self, stage: str, metrics: dict) -> None:
        numbers = {f"{stage}/{k}": v for k, v in metrics.items() if isinstance(v, float) and k != self.main_metric}
        self.log_dict(numbers, sync_dist=True)
        self.log(f"{stage}/{self.main_metric}", metrics[self.main_metric], prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        split, results = self.trainer.datamodule.split("val"), self.gathered()
        self._log_metrics("val", self.evaluate(split, results))
        board = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if board is not None and self.trainer.is_global_zero:  # what the weights of this epoch predict
            board.experiment.add_figure("val/samples", self.samples(split, results), self.global_step)

    def on_test_epoch_end(self) -> None:
        split = self.trainer.datamodule.split("test")
        results = self.gathered()
        metrics = self.evaluate(split, results)
        self._log_metrics("test", metrics)
        log_dir = self.log_dir()
        if self.trainer.is_global_zero:
            folder = self.write_report(log_dir, split, results, metrics, time.perf_counter() - self._started)
            print(f"Evaluation report: {folder / 'report.md'} (numbers in {folder / 'metrics.json'})")

    def run_details(self, task: str, input_size: tuple[int, int], data: str, counts: dict[str, int],
                    seconds: float) -> dict[str, Any]:
        """What produced a report's numbers: model, size and cost, data, weights or exported file and its
        runtime, code version, time."""
        checkpoint = getattr(self.trainer, "ckpt_path", None) or self.init_from
        if self.exported is not None:
            checkpoint = str(self.exported.path)
            weights = {"runtime": self.exported.runtime, "model file": checkpoint,
                       "model file size (MB)": f"{file_size_mb(self.exported.path):.2f}",
                       "exported from": self.exported.metadata.get("checkpoint", "-")}
        else:
            weights = {"runtime": f"PyTorch {torch.__version__} (eager)",
                       "checkpoint": checkpoint or "none (weights as initialized)"}
        return {
            "task": task,
            "backbone": backbone_name(self.model),
            "head": type(self.model).__name__,
            "input size": f"{input_size[0]}x{input_size[1]}",
            "parameters (M)": f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}",
            "GFLOPs (one forward)": f"{self.gflops(input_size):.2f}",
            "data": data,
            **counts,
            **weights,
            "checkpoint sha256": file_sha256(checkpoint) if checkpoint else "-",
            "Kestrel": kestrel_version(),
            "training (fit wall time)": fit_time(self.training_logs()) or "-",
            "evaluation wall time (s)": f"{seconds:.1f}",
        }

    @torch.no_grad()
    def gflops(self, input_size: tuple[int, int]) -> float:
        """GFLOPs of one forward of one image, decoding included (torch's FLOP counter)."""
        counter = FlopCounterMode(display=False)
        was_training = self.model.training
        with counter:
            self.model.eval()(torch.zeros(1, 3, *input_size, dtype=torch.uint8, device=self.device))
        self.model.train(was_training)
        return counter.get_total_flops() / 1e9

    def log_dir(self) -> str:
        """The run's log folder; a collective under DDP, so every process must ask."""
        return self.trainer.log_dir


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
    """How long the fit of these training logs took, by the ``time/fit_s`` its :class:`tasks.cli.FitTimer`
    logged each epoch (a resumed fit counts on from its checkpoint's): ``9 min 12 s for 10 epochs (validation
    35 s of it)``; None if they hold none."""
    rows = [row for log in logs for row in plots.read_log(log) if "time/fit_s" in row]
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


def backbone_name(network: nn.Module) -> str:
    """The registered name of a network's backbone (found inside necks and wrappers), else its class."""
    backbone = getattr(network, "backbone", None)
    while not hasattr(backbone, "name") and hasattr(backbone, "body"):
        backbone = backbone.body
    return getattr(backbone, "name", type(backbone).__name__)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def kestrel_version() -> str:
    """The installed version and, in a git checkout, the commit (``+dirty`` with uncommitted changes)."""
    try:
        installed = version("kestrel-vision")
    except PackageNotFoundError:
        installed = "not installed"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{installed} (not a git checkout)"
    return f"{installed}, commit {commit}{'+dirty' if dirty else ''}"
