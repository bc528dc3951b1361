"""Scoring a network on a split without a Trainer: what the benchmark's accuracy column runs."""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from ..deploy.runtime import Network, run_images
from ._base import Evaluator


def evaluate(network: Network, datamodule: Any, stage: str = "test", progress: bool = False,
             **options: Any) -> tuple[dict[str, Any], Evaluator]:
    """Run ``network`` on a split and score it: the numbers ``test`` writes into ``metrics.json``, and the evaluator
    (its :meth:`~tasks.evaluation.Evaluator.report` for more).

    Args:
        network: A task's network in eval mode (``task.model``, or ``backbones.inference_copy`` of it), or an
            exported file in its runtime (``tasks.deploy.runtime.load_exported``): uint8 images in, decoded
            outputs out.
        datamodule: A Kestrel data module (``tasks.from_config.data_from_config``); ``stage`` is ``validate``
            (its validation split) or ``test``.
        stage: Which split.
        progress: Show a progress bar.
        **options: The evaluator's options (pose: ``sigmas``, ``keypoint_score_threshold``,
            ``nms_threshold``; ``task.evaluator_options()`` gives the task's).
    """
    if stage not in ("validate", "test"):
        raise ValueError(f"stage must be validate or test, got {stage!r}")
    datamodule.setup(stage)
    evaluator = datamodule.evaluator("val" if stage == "validate" else "test", **options)
    loader = datamodule.val_dataloader() if stage == "validate" else datamodule.test_dataloader()
    with torch.inference_mode():
        for images, targets in tqdm(loader, desc=f"evaluating ({stage})", unit="batch", disable=not progress):
            evaluator.update(run_images(network, images), targets)
    return evaluator.compute(), evaluator
