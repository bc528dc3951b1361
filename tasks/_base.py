"""What every Kestrel task module shares: optimization, ``init_from``, and per-image evaluation results."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import OptimizerCallable

from backbones._weights import load_weights, read_state_dict

from .metrics import gather_by_index
from .optim import SchedulerCallable, TrainingLength, param_groups


class KestrelTask(pl.LightningModule):
    """Base of the task modules: the model lives in ``self.model``.

    Optimizer parameter groups keep norm weights and biases out of weight decay; the scheduler is
    stepped every optimizer step and told the training length. ``init_from`` is loaded at setup, so
    a ``--ckpt_path`` restored afterwards wins. Evaluation steps store per-image results with
    :meth:`keep`; :meth:`gathered` merges them across processes, each image counted once.

    Args:
        optimizer: Builds the optimizer from parameter groups.
        scheduler: Builds the schedule from the optimizer and the training length.
        norm_weight_decay: Weight decay of norm weights and biases (None: the optimizer's).
        init_from: Weights for the whole model (a Kestrel checkpoint or state dict).
    """

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

    def on_predict_epoch_start(self) -> None:
        self._results = {}

    def log_dir(self) -> str:
        """The run's log folder; a collective under DDP, so every process must ask."""
        return self.trainer.log_dir
