"""Models built from Kestrel's configs, outside any training run (``hubconf.py`` serves these), and the task
class of each task name (:func:`task_class`).

:func:`model_from_config` reads a task config's ``model`` section, fills what the data would link
(class names, keypoint names, input size) and returns the task's network (``task.model``), with
weights from a Kestrel checkpoint or state dict if given. The network takes uint8 RGB images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from torch import nn

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def task_class(task: str) -> type:
    """The LightningModule of a task: ``detect``, ``segment`` or ``pose`` (imported when asked for)."""
    if task == "detect":
        from .detect import DetectionTask

        return DetectionTask
    if task == "segment":
        from .segment import SegmentationTask

        return SegmentationTask
    if task == "pose":
        from .pose import PoseTask

        return PoseTask
    raise ValueError(f"task must be detect, segment or pose, got {task!r}")


def _task_class(config: Path) -> type:
    task = {"ssdlite": "detect", "deeplabv3plus": "segment", "pose": "pose"}.get(config.name.split("_")[0])
    if task is None:
        raise ValueError(f"config {str(config)!r}: its name must start with ssdlite_, deeplabv3plus_ or pose_")
    return task_class(task)


def model_from_config(
    config: str | Path, weights: str | None = None, pretrained_backbone: bool | str = False, **model_args: Any
) -> nn.Module:
    """The network a task config describes (``configs/<name>.yaml`` or a path).

    Args:
        config: A config file, or the name of one in Kestrel's ``configs/`` (``"ssdlite_mbv3"``).
        weights: A Kestrel checkpoint (``best.ckpt``) or state dict of the whole network.
        pretrained_backbone: Overrides the config's ``model.backbone.pretrained`` (False: no
            ImageNet weights, nothing downloaded).
        **model_args: What the data would give the task: ``class_names`` (detection, segmentation; or
            ``num_classes`` for placeholder names ``class_1``, ...), ``image_size``, ``keypoint_names``
            (pose); any other ``model.*`` key too.
    """
    path = Path(config)
    if not path.suffix:
        path = CONFIGS / f"{config}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} does not exist")
    task_class = _task_class(path)
    section = yaml.safe_load(path.read_text()).get("model", {})
    backbone = section.setdefault("backbone", {})
    if "class_path" not in backbone:  # a backbone by name; a class_path one keeps its own arguments
        backbone["pretrained"] = pretrained_backbone
    count = model_args.pop("num_classes", None)
    if count is not None and "class_names" not in model_args:
        model_args["class_names"] = [f"class_{i}" for i in range(1, count + 1)]
    section.update(model_args)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(task_class, "model", fail_untyped=False)
    task = parser.instantiate(parser.parse_object({"model": section})).model
    if weights is not None:
        task.load_init_weights(weights)
    return task.model
