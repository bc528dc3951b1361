"""Optimizer parameter groups and learning-rate schedules with linear warm-up, from torch's schedulers.

Task configs give the optimizer as a callable of the parameter groups (``OptimizerCallable``) and the
scheduler as a callable of the optimizer and the :class:`TrainingLength`, so a schedule is written
in steps or epochs and never repeats ``trainer.max_epochs``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    PolynomialLR,
    SequentialLR,
)


@dataclass(frozen=True)
class TrainingLength:
    """How long training runs, in optimizer steps."""

    total_steps: int
    steps_per_epoch: int


SchedulerCallable = Callable[[Optimizer, TrainingLength], LRScheduler]


def param_groups(module: nn.Module, norm_weight_decay: float | None = 0.0) -> list[dict]:
    """Split trainable parameters into weight-decayed ones and norm/bias ones (1-D tensors).

    Args:
        module: The model.
        norm_weight_decay: Weight decay of norm weights and biases; None keeps the optimizer's.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups: list[dict] = [{"params": decay}]
    if no_decay:
        groups.append({"params": no_decay} if norm_weight_decay is None else
                      {"params": no_decay, "weight_decay": norm_weight_decay})
    return groups


class _Warmup(SequentialLR):
    """Linear warm-up over ``warmup_steps`` (at most all but one step), then the main schedule.

    ``main`` builds the main schedule from the steps left after the warm-up; stepped every step.

    Resumed (:meth:`load_state_dict`), the schedule is built for this run's length and stepped to the checkpoint's
    step, rather than given the checkpoint's sub-schedules: those were built for the length of the run that wrote
    it, and a run resumed with more epochs would otherwise go on with a cosine that had already ended (it then
    swings between the base rate and the floor at every step). For an unchanged length both are the same.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        length: TrainingLength,
        warmup_steps: int,
        warmup_factor: float,
        main: Callable[[int], LRScheduler],
    ):
        warmup_steps = min(warmup_steps, max(length.total_steps - 1, 0))
        start = warmup_factor if warmup_steps > 0 else 1.0  # SequentialLR needs a first scheduler
        warmup = LinearLR(optimizer, start_factor=start, total_iters=max(warmup_steps, 1))
        remaining = max(length.total_steps - max(warmup_steps, 1), 1)
        super().__init__(optimizer, [warmup, main(remaining)], milestones=[max(warmup_steps, 1)])
        self.warmup_steps = warmup_steps
        self.total_steps = length.total_steps
        self._arguments = (optimizer, length, warmup_steps, warmup_factor, main)

    def state_dict(self) -> dict:
        state = {**super().state_dict(), "total_steps": self.total_steps}
        state.pop("_arguments", None)  # how to build it again (the optimizer, a function): not state
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        steps, planned = state_dict["last_epoch"], state_dict.get("total_steps")
        optimizer = self._arguments[0]
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        _Warmup.__init__(self, *self._arguments)
        with warnings.catch_warnings():  # "step() before optimizer.step()": these steps only replay the schedule
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self.step()
        if planned is not None and planned != self.total_steps:
            print(f"The learning-rate schedule now spans {self.total_steps} steps (the checkpoint's run planned "
                  f"{planned}); it goes on from step {steps}")


class WarmupCosineLR(_Warmup):
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` of the base rate at the end of training.

    Args:
        optimizer: The optimizer.
        length: Training length (filled in by the task).
        warmup_steps: Steps of linear warm-up from ``warmup_factor`` of the base rate.
        warmup_factor: Starting fraction of the base rate.
        min_lr_ratio: Final fraction of the base rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        length: TrainingLength,
        warmup_steps: int = 1000,
        warmup_factor: float = 0.001,
        min_lr_ratio: float = 0.0,
    ):
        floor = max(group["lr"] for group in optimizer.param_groups) * min_lr_ratio
        super().__init__(optimizer, length, warmup_steps, warmup_factor,
                         lambda steps: CosineAnnealingLR(optimizer, T_max=steps, eta_min=floor))


class WarmupPolyLR(_Warmup):
    """Linear warm-up, then polynomial decay ``(1 - t / T) ** power`` (DeepLab's "poly" schedule).

    Args:
        optimizer: The optimizer.
        length: Training length (filled in by the task).
        power: Exponent of the decay (0.9 in the DeepLab papers).
        warmup_steps: Steps of linear warm-up.
        warmup_factor: Starting fraction of the base rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        length: TrainingLength,
        power: float = 0.9,
        warmup_steps: int = 0,
        warmup_factor: float = 0.001,
    ):
        super().__init__(optimizer, length, warmup_steps, warmup_factor,
                         lambda steps: PolynomialLR(optimizer, total_iters=steps, power=power))


class WarmupMultiStepLR(_Warmup):
    """Linear warm-up, then the rate times ``gamma`` at each milestone epoch (mmpose's step schedule).

    Args:
        optimizer: The optimizer.
        length: Training length (filled in by the task).
        milestones: Epochs after which the rate is multiplied by ``gamma``.
        gamma: The factor.
        warmup_steps: Steps of linear warm-up.
        warmup_factor: Starting fraction of the base rate.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        length: TrainingLength,
        milestones: Iterable[int] = (170, 200),
        gamma: float = 0.1,
        warmup_steps: int = 500,
        warmup_factor: float = 0.001,
    ):
        def main(steps: int) -> MultiStepLR:  # milestones count from the end of the warm-up
            done = length.total_steps - steps
            return MultiStepLR(optimizer, [max(e * length.steps_per_epoch - done, 1) for e in milestones], gamma)

        super().__init__(optimizer, length, warmup_steps, warmup_factor, main)
