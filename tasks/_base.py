"""What every Kestrel task module shares: optimization, ``init_from``, self-describing checkpoints, the network's
predictions (from ``self.model`` or an exported file) and the one evaluation step."""

from __future__ import annotations

import functools
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.parsing import collect_init_args
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import Backbone, ensure_pyramid, inference_copy
from backbones._weights import load_weights, read_state_dict

from . import qat
from .deploy.quantize import describe_int8
from .deploy.runtime import ExportedModel, file_size_mb, load_exported, run_images
from .evaluation import Evaluator
from .optim import SchedulerCallable, TrainingLength, param_groups
from .provenance import backbone_name, file_sha256
from .qat import QUANTIZATIONS
from .reporting.figures import sample_grid

log = logging.getLogger(__name__)


def relabelled_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """The keys of ``state`` whose shape differs from the model's, when all of them lie in ``model.label_layers``:
    weights trained for another number of labels. Empty when they fit, or when other layers differ too (other
    weights, not other labels)."""
    prefixes = tuple(getattr(model, "label_layers", ()))
    own = model.state_dict()
    differ = [k for k, v in state.items() if k in own and v.shape != own[k].shape]
    return differ if prefixes and all(k.startswith(prefixes) for k in differ) else []

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


def checkpoint_hyperparameters(path: str) -> dict[str, Any]:
    """The hyperparameters a Kestrel checkpoint was trained with; empty for a bare state dict or another file."""
    try:
        return dict(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {}))
    except Exception:  # noqa: BLE001 - anything else has none to give
        return {}


def checkpoint_backbone(path: str) -> str | None:
    """The backbone name a Kestrel checkpoint was trained with, or None (a bare state dict, another file)."""
    try:
        return checkpoint_hyperparameters(path)["backbone"]["init_args"]["name"]
    except (KeyError, TypeError):
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

    Evaluation is one step for every task: the network predicts a batch (:meth:`predict_images`: uint8
    images in, decoded outputs per image, from ``self.model`` or, after :meth:`use_exported`, from an
    exported file in its runtime) and the data module's evaluator of the split (``datamodule.evaluator``)
    is updated with those outputs and the batch's targets; at the epoch's end its numbers are logged as
    ``val/*`` and ``test/*`` (``main_metric`` on the progress bar). Reports and predictions are written by
    callbacks (``tasks.reporting``).

    Args:
        optimizer: Builds the optimizer from parameter groups.
        scheduler: Builds the schedule from the optimizer and the training length.
        norm_weight_decay: Weight decay of norm weights and biases (None: the optimizer's).
        init_from: Weights for the whole model (a Kestrel checkpoint or state dict).
        channels_last: Train in channels-last memory (faster convolutions), and keep the inference copy
            that evaluates and predicts (:func:`backbones.inference_copy`: batch norms folded) in it too.
        quantization: ``qat``: the network trains with fake quantization (:mod:`tasks.qat`), put in after
            ``init_from`` is loaded; a checkpoint of such a run says so, and loading it puts it in first.
    """

    main_metric = "map"  # on the progress bar; each task sets its own
    task = ""  # detect, segment, pose: the name exported files carry
    description = ""  # what the report's details call the model

    def __init__(
        self,
        optimizer: OptimizerCallable,
        scheduler: SchedulerCallable,
        norm_weight_decay: float | None,
        init_from: str | None,
        channels_last: bool = True,
        quantization: str | None = None,
    ):
        super().__init__()
        self._save_arguments(inspect.currentframe())
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.norm_weight_decay = norm_weight_decay
        self.init_from = init_from
        self.channels_last = channels_last
        if quantization not in (None, *QUANTIZATIONS):
            raise ValueError(f"model.quantization must be one of {', '.join(QUANTIZATIONS)} or null, "
                             f"got {quantization!r}")
        self.quantization = quantization
        self.exported: ExportedModel | None = None
        self._initialized = False
        # neither is a submodule (no checkpoint entry, device move or DDP sync): the network as evaluation runs
        # it, a copy with the weights of now; and the evaluator of the split being evaluated
        object.__setattr__(self, "_inference", None)
        object.__setattr__(self, "_evaluator", None)
        # an INT8 file's float reference, scored beside it by `test` (see float_reference)
        object.__setattr__(self, "_reference", None)
        self.reference_result: dict[str, Any] | None = None

    def _save_arguments(self, frame) -> None:
        """The task's arguments (the subclass's too) as its hyperparameters: LightningCLI's parsed config
        when it builds the task (its hyperparameters then name their ``_instantiator``), else a description
        of what was passed in Python."""
        with warnings.catch_warnings():  # modules passed in Python are described below
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn\.Module`.*")
            self.save_hyperparameters(frame=frame)
        if "_instantiator" in self.hparams:
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
        hparams["quantization"] = self.quantization
        checkpoint["hyper_parameters"] = hparams

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint trained for other labels than this task's (the data's: other names, or another order) is
        refused: its scores would be of the wrong classes. A checkpoint of a QAT run puts fake quantization into the
        network before its weights load, whatever the config says: its state holds the fake quantizers' scales too."""
        hparams = checkpoint.get("hyper_parameters", {})
        for key in ("class_names", "keypoint_names"):
            theirs, mine = hparams.get(key), getattr(self, key, None)
            if theirs is not None and mine is not None and list(theirs) != list(mine):
                differ = next(i for i, pair in enumerate(zip(list(theirs) + [None] * len(mine),
                                                             list(mine) + [None] * len(theirs))) if pair[0] != pair[1])
                raise ValueError(
                    f"the checkpoint was trained for {key.replace('_', ' ')} {list(theirs)}, the data has "
                    f"{list(mine)} (they differ from label {differ + 1}): its predictions would be scored as other "
                    "labels. Evaluate it on data of its labels, or fine-tune it on these with --model.init_from")
        if checkpoint.get("hyper_parameters", {}).get("quantization") == "qat":
            self.quantization = "qat"
            self.prepare_quantization()
            qat.size_like(self.model, checkpoint.get("state_dict", {}), prefix="model.")

    def prepare_quantization(self) -> None:
        """Put fake quantization into the network (once) if this task trains with it (:func:`tasks.qat.prepare`)."""
        if self.quantization == "qat" and not qat.is_prepared(self.model):
            height, width = self.input_size()
            example = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(0))
            device = next(self.model.parameters()).device
            qat.prepare(self.model.cpu(), example).to(device)

    def set_classes(self, class_names: list[str], category_ids: list[int] | None) -> None:
        """Labels 1..K: their names and the data set's category ids (1..K if None)."""
        if category_ids is not None and len(category_ids) != len(class_names):
            raise ValueError(f"{len(category_ids)} category ids for {len(class_names)} class names")
        self.class_names = list(class_names)
        self.category_ids = list(category_ids or range(1, len(class_names) + 1))
        self.num_classes = len(self.class_names)

    def input_size(self) -> tuple[int, int]:
        """The network's input ``(height, width)``."""
        return (self.image_size, self.image_size)

    def metadata(self) -> dict[str, Any]:
        """What using the network needs besides its weights: task, input size, class names and ids (pose:
        keypoint names). Exported files carry it (see ``tasks.deploy.export``)."""
        return {"task": self.task, "input_size": list(self.input_size()), "class_names": self.class_names,
                "category_ids": self.category_ids}

    @staticmethod
    def pyramid(backbone: nn.Module) -> nn.Module:
        """The task's backbone, checked: one built by name already is; one given by ``class_path`` (any
        importable module) must satisfy the pyramid contract, or the error says what it lacks."""
        if isinstance(backbone, Backbone):
            return backbone
        kind = type(backbone)
        return ensure_pyramid(backbone, f"model.backbone {kind.__module__}.{kind.__qualname__}")

    # ----------------------------------------------------------------- weights
    def setup(self, stage: str) -> None:
        self.initialize(self.trainer.datamodule, fine_tune=stage == "fit")
        if stage == "fit" and self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def initialize(self, datamodule: pl.LightningDataModule | None = None, fine_tune: bool = False) -> None:
        """Load ``init_from`` (once: weights restored from ``--ckpt_path`` afterwards win); ``datamodule`` tells
        weights in another library's layout which labels they map to; ``fine_tune`` (``fit``) lets the label
        layers of weights trained for other labels start afresh (:meth:`load_init_weights`)."""
        if self.init_from and not self._initialized:
            self.load_init_weights(self.init_from, datamodule, fine_tune)
        self._initialized = True
        self.prepare_quantization()

    def load_init_weights(self, path: str, datamodule: pl.LightningDataModule | None = None,
                          fine_tune: bool = False) -> None:
        """Load ``init_from`` strictly; a Lightning checkpoint of the task loses its ``model.`` prefix. Weights
        that do not fit name the backbone of the checkpoint they come from, where it says.

        With ``fine_tune``, weights trained for another number of labels (classes, keypoints) load all but the
        head's label layers (``label_layers`` of the network: the layers sized by the label count), which keep
        their fresh initialization, as torchvision's and Ultralytics' fine-tuning replace the predictor; the
        layers are named on the console. Without it (validate, test, predict, export) that is an error: a
        network whose label layers are untrained would be scored or shipped.
        """
        state = self.convert_init_weights(path, self.init_state_dict(path), datamodule)
        fresh = relabelled_keys(self.model, state)
        if fresh and not fine_tune:
            raise ValueError(f"model.init_from {path!r} was trained for other labels than this model's "
                             f"{self.label_count()} (its label layers differ: {fresh[0]} ...): fine-tune it with "
                             "`fit`, which starts those layers afresh, before validating, testing or exporting")
        if fresh:
            prefixes = sorted({next(p for p in self.model.label_layers if k.startswith(p)) for k in fresh})
            rank_zero_info(f"model.init_from {path}: trained for other labels than this model's "
                           f"{self.label_count()}; the label layers ({', '.join(p.rstrip('.') for p in prefixes)}: "
                           f"{len(fresh)} tensors) start afresh, everything else is loaded")
        try:
            load_weights(self.model, state, repr(path), drop=fresh)
        except ValueError as err:
            theirs, ours = checkpoint_backbone(path), next(
                (m.name for m in self.model.modules() if isinstance(m, Backbone)), None)
            if theirs and ours and theirs != ours:
                raise ValueError(f"weights {path!r} are a checkpoint of backbone {theirs!r}, this model's backbone is "
                                 f"{ours!r} (model.backbone.name): {str(err).split(': ', 1)[-1][:300]}") from None
            raise

    def label_count(self) -> str:
        """What the label layers are sized by, for messages (``4 classes``)."""
        return f"{len(self.class_names)} classes"

    @staticmethod
    def init_state_dict(path: str) -> dict[str, torch.Tensor]:
        state = read_state_dict(path)
        if state and all(k.startswith("model.") for k in state):
            state = {k.removeprefix("model."): v for k, v in state.items()}
        return state

    def convert_init_weights(self, path: str, state: dict[str, torch.Tensor],
                             datamodule: pl.LightningDataModule | None = None) -> dict[str, torch.Tensor]:
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

    def _copy_for_inference(self) -> None:
        """The network as evaluation and prediction run it, with the weights of now."""
        copy = inference_copy(self.model, self.channels_last) if self.exported is None else None
        object.__setattr__(self, "_inference", copy)

    def on_train_epoch_start(self) -> None:
        object.__setattr__(self, "_inference", None)  # the weights it copied are changing

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """QAT: the batch norms' statistics, then the quantization ranges, frozen on schedule (:mod:`tasks.qat`)."""
        if qat.is_prepared(self.model):
            progress = self.global_step / max(int(self.trainer.estimated_stepping_batches), 1)
            for what in qat.follow_schedule(self.model, progress):
                print(f"QAT: {what} frozen from step {self.global_step}")

    def on_predict_epoch_start(self) -> None:
        self._copy_for_inference()

    def predict_step(self, batch, batch_idx: int) -> list[dict[str, torch.Tensor]]:
        """Per image, the network's outputs in the image's pixels; the task's prediction writer
        (``tasks.reporting``) writes them."""
        return self.predict_images(batch[0])

    # ----------------------------------------------------------------- evaluation
    @property
    def evaluator(self) -> Evaluator | None:
        """The evaluator of the split being (or last) evaluated."""
        return self._evaluator

    def evaluator_options(self) -> dict[str, Any]:
        """The task's evaluation settings, given to ``datamodule.evaluator`` (pose: its rescoring and NMS)."""
        return {}

    def _start_evaluation(self, stage: str) -> None:
        self._copy_for_inference()
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "evaluator"):
            raise ValueError(f"{type(self).__name__} evaluates with its data module's evaluator: give a Kestrel data "
                             f"module (tasks.data), not {type(datamodule).__name__ if datamodule else 'bare loaders'}")
        evaluator = datamodule.evaluator(stage, **self.evaluator_options()).to(self.device)
        object.__setattr__(self, "_evaluator", evaluator)

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation("val")

    def on_test_epoch_start(self) -> None:
        self._start_evaluation("test")
        object.__setattr__(self, "_reference", None)
        self.reference_result = None
        reference = float_reference(self.exported.metadata) if self.exported is not None else None
        if reference is None:
            return
        if not Path(reference).is_file():
            print(f"INT8 file: its float reference {reference} is not here, so it is not scored beside it")
            return
        try:
            network = type(self).load_from_checkpoint(reference, map_location=self.device).model
        except Exception as err:  # noqa: BLE001 - the file's own score stands without it
            print(f"INT8 file: its float reference {reference} cannot be loaded ({type(err).__name__}: "
                  f"{str(err).splitlines()[0][:200] if str(err) else ''}), so it is not scored beside it")
            return
        evaluator = self.trainer.datamodule.evaluator("test", **self.evaluator_options()).to(self.device)
        object.__setattr__(self, "_reference", (inference_copy(network.eval()), evaluator, reference))

    def validation_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        self._evaluator.update(self.predict_images(images), targets)

    def test_step(self, batch, batch_idx: int) -> None:
        images, targets = batch
        self._evaluator.update(self.predict_images(images), targets)
        if self._reference is not None:
            network, evaluator, _ = self._reference
            evaluator.update(run_images(network, images), targets)

    def _log_metrics(self, stage: str, metrics: dict) -> None:
        numbers = {f"{stage}/{k}": v for k, v in metrics.items() if isinstance(v, float) and k != self.main_metric}
        self.log_dict(numbers, sync_dist=True)
        self.log(f"{stage}/{self.main_metric}", metrics[self.main_metric], prog_bar=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        self._log_metrics("val", self._evaluator.compute())
        board = next((lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)), None)
        if board is not None and self.trainer.is_global_zero:  # what the weights of this epoch predict
            board.experiment.add_figure("val/samples", sample_grid(self._evaluator.report()), self.global_step)

    def on_test_epoch_end(self) -> None:
        metrics = self._evaluator.compute()
        self._log_metrics("test", metrics)
        if self._reference is not None:
            _, evaluator, reference = self._reference
            value, mine = evaluator.compute()[self.main_metric], metrics[self.main_metric]
            self.reference_result = {"checkpoint": reference, self.main_metric: value}
            print(f"INT8 file: {self.main_metric} {mine:.4f}; its float reference in PyTorch ({reference}) "
                  f"{value:.4f} on the same images: {mine - value:+.4f}")
            object.__setattr__(self, "_reference", None)

    # ----------------------------------------------------------------- what the report says of the model
    def model_details(self) -> dict[str, str]:
        """The model's rows of a report's details: task, backbone, head, input size, parameters, GFLOPs."""
        height, width = self.input_size()
        return {
            "task": self.description,
            "backbone": backbone_name(self.model),
            "head": type(self.model).__name__,
            "input size": f"{height}x{width}",
            "parameters (M)": f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}",
            "GFLOPs (one forward)": f"{self.gflops():.2f}",
        }

    def weights_details(self) -> dict[str, str]:
        """Where the evaluated weights come from: the checkpoint, or the exported file and its runtime."""
        checkpoint = self.trainer.ckpt_path or self.init_from
        if self.exported is not None:
            checkpoint = str(self.exported.path)
            weights = {"runtime": self.exported.runtime, "model file": checkpoint,
                       "model file size (MB)": f"{file_size_mb(self.exported.path):.2f}",
                       "exported from": self.exported.metadata.get("checkpoint", "-")}
            if "int8" in self.exported.metadata:
                weights["INT8"] = describe_int8(self.exported.metadata["int8"])
        else:
            weights = {"runtime": f"PyTorch {torch.__version__} (eager)",
                       "checkpoint": checkpoint or "none (weights as initialized)"}
        if self.reference_result is not None:
            value = self.reference_result[self.main_metric]
            weights["float reference (PyTorch)"] = (f"{self.main_metric} {value:.4f} "
                                                    f"({self.reference_result['checkpoint']})")
        return {**weights, "checkpoint sha256": file_sha256(checkpoint) if checkpoint else "-"}

    @torch.no_grad()
    def gflops(self) -> float:
        """GFLOPs of one forward of one image at the input size, decoding included (torch's FLOP counter; a QAT
        network's counted on its INT8 version, whose fake quantizers the counter cannot run through)."""
        counter = FlopCounterMode(display=False)
        was_training = self.model.training
        model = qat.convert(self.model) if qat.is_prepared(self.model) else self.model.eval()
        with counter:
            model(torch.zeros(1, 3, *self.input_size(), dtype=torch.uint8, device=self.device))
        self.model.train(was_training)
        return counter.get_total_flops() / 1e9


def float_reference(metadata: dict[str, Any]) -> str | None:
    """The float checkpoint an INT8 file is measured against: the checkpoint it was exported from, or for a QAT
    network's file the float checkpoint its fine-tune started from (``init_from``). None for a float file."""
    if metadata.get("precision") != "int8" or not metadata.get("checkpoint"):
        return None
    checkpoint = metadata["checkpoint"]
    if metadata.get("int8", {}).get("quantization") != "qat":
        return checkpoint
    if not Path(checkpoint).is_file():
        return checkpoint
    return checkpoint_hyperparameters(checkpoint).get("init_from")
