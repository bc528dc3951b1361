"""What every Kestrel task module shares: optimization, ``init_from``, and per-image evaluation results."""

from __future__ import annotations

import hashlib
import subprocess
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import Backbone, ensure_pyramid
from backbones._weights import load_weights, read_state_dict

from .metrics import gather_by_index
from .optim import SchedulerCallable, TrainingLength, param_groups


class KestrelTask(pl.LightningModule):
    """Base of the task modules: the model lives in ``self.model``.

    Optimizer parameter groups keep norm weights and biases out of weight decay; the scheduler is
    stepped every optimizer step and told the training length. ``init_from`` is loaded at setup, so
    a ``--ckpt_path`` restored afterwards wins.

    Evaluation: a subclass's :meth:`collect` stores per-image results of a batch with :meth:`keep`;
    :meth:`gathered` merges them across processes (each image counted once) and :meth:`evaluate`
    turns them into metrics, logged as ``val/*`` and ``test/*`` (``main_metric`` on the progress bar);
    ``test`` then writes the report through :meth:`write_report` and prints where it is.

    Args:
        optimizer: Builds the optimizer from parameter groups.
        scheduler: Builds the schedule from the optimizer and the training length.
        norm_weight_decay: Weight decay of norm weights and biases (None: the optimizer's).
        init_from: Weights for the whole model (a Kestrel checkpoint or state dict).
    """

    main_metric = "map"  # on the progress bar; each task sets its own

    def __init__(
        self,
        optimizer: OptimizerCallable,
        scheduler: SchedulerCallable,
        norm_weight_decay: float | None,
        init_from: str | None,
    ):
        super().__init__()
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.norm_weight_decay = norm_weight_decay
        self.init_from = init_from
        self._initialized = False
        self._results: dict[int, Any] = {}
        self._started = 0.0

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

    def load_init_weights(self, path: str) -> None:
        """Load ``init_from`` strictly; a Lightning checkpoint of the task loses its ``model.`` prefix."""
        load_weights(self.model, self.convert_init_weights(path, self.init_state_dict(path)), repr(path))

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

    # per-image results of validate / test / predict
    def keep(self, index: int, result: Any) -> None:
        self._results[index] = result

    def gathered(self) -> dict[int, Any]:
        return gather_by_index(self._results)

    def on_validation_epoch_start(self) -> None:
        self._results = {}

    def on_test_epoch_start(self) -> None:
        self._results = {}
        self._started = time.perf_counter()

    def on_predict_epoch_start(self) -> None:
        self._results = {}

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
        self._log_metrics("val", self.evaluate(self.trainer.datamodule.split("val"), self.gathered()))

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
        """What produced a report's numbers: model, size and cost, data, checkpoint, code version, time."""
        checkpoint = getattr(self.trainer, "ckpt_path", None) or self.init_from
        backbone = getattr(self.model, "backbone", None)
        while not hasattr(backbone, "name") and hasattr(backbone, "body"):  # inside necks and wrappers
            backbone = backbone.body
        return {
            "task": task,
            "backbone": getattr(backbone, "name", type(backbone).__name__),
            "head": type(self.model).__name__,
            "input size": f"{input_size[0]}x{input_size[1]}",
            "parameters (M)": f"{sum(p.numel() for p in self.model.parameters()) / 1e6:.2f}",
            "GFLOPs (one forward)": f"{self.gflops(input_size):.2f}",
            "data": data,
            **counts,
            "checkpoint": checkpoint or "none (weights as initialized)",
            "checkpoint sha256": file_sha256(checkpoint) if checkpoint else "-",
            "Kestrel": kestrel_version(),
            "evaluation wall time (s)": f"{seconds:.1f}",
        }

    @torch.no_grad()
    def gflops(self, input_size: tuple[int, int]) -> float:
        """GFLOPs of one forward of one image (torch's FLOP counter)."""
        counter = FlopCounterMode(display=False)
        with counter:
            self.model(torch.zeros(1, 3, *input_size, device=self.device))
        return counter.get_total_flops() / 1e9

    def log_dir(self) -> str:
        """The run's log folder; a collective under DDP, so every process must ask."""
        return self.trainer.log_dir


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
