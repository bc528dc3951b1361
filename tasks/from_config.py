"""Models built from Kestrel's configs, outside any training run (``hubconf.py`` serves these), and the task
and data classes of each task name (:func:`task_class`, :func:`data_class`).

:func:`task_from_config` reads a task config's ``model`` section, fills what the data would link
(class names, keypoint names, input size: from a data module, or given) and returns the task, with
weights from a Kestrel checkpoint or state dict if given; :func:`model_from_config` returns its
network (``task.model``), which takes uint8 RGB images. :func:`data_from_config` builds the data module.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytorch_lightning as pl
import yaml
from jsonargparse import ArgumentParser
from torch import nn

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TASKS = {"detect": ("DetectionTask", "DetectionData"), "segment": ("SegmentationTask", "SegmentationData"),
         "pose": ("PoseTask", "PoseData")}


def task_module(task: str) -> ModuleType:
    """``tasks.detect``, ``tasks.segment`` or ``tasks.pose`` (imported when asked for)."""
    if task not in TASKS:
        raise ValueError(f"task must be detect, segment or pose, got {task!r}")
    return importlib.import_module(f"tasks.{task}")


def task_class(task: str) -> type:
    """The LightningModule of a task: ``detect``, ``segment`` or ``pose``."""
    return getattr(task_module(task), TASKS[task][0])


def data_class(task: str) -> type:
    """The LightningDataModule of a task."""
    return getattr(task_module(task), TASKS[task][1])


def config_path(config: str | Path) -> Path:
    """A config file, or the name of one in Kestrel's ``configs/`` (``"ssdlite_mbv3"``).

    Raises:
        FileNotFoundError: there is no such file.
    """
    path = Path(config)
    if not path.suffix:
        path = CONFIGS / f"{config}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} does not exist")
    return path


def config_task(config: str | Path) -> str:
    """The task a config is for, by its name: ``ssdlite*`` detect, ``deeplabv3plus*`` segment, ``pose*`` pose."""
    head = Path(config).name.split("_")[0]
    for prefix, task in (("ssdlite", "detect"), ("deeplabv3plus", "segment"), ("pose", "pose")):
        if head.startswith(prefix):
            return task
    raise ValueError(f"config {str(config)!r}: its name must start with ssdlite, deeplabv3plus or pose")


def read_config(config: str | Path) -> dict[str, Any]:
    """A config file's sections (``trainer``, ``model``, ``data``, ...) as written."""
    return yaml.safe_load(config_path(config).read_text()) or {}


def data_from_config(config: str | Path, **data_args: Any) -> pl.LightningDataModule:
    """The data module of a config's ``data`` section (``data_args`` override its keys); its annotation
    files are read when a split is first asked for."""
    path = config_path(config)
    section = {**read_config(path).get("data", {}), **data_args}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(data_class(config_task(path)), "data", fail_untyped=False)
    return parser.instantiate(parser.parse_object({"data": section})).data


def task_from_config(
    config: str | Path, weights: str | None = None, pretrained_backbone: bool | str = False,
    data: pl.LightningDataModule | None = None, **model_args: Any
) -> pl.LightningModule:
    """The task (LightningModule) a config describes, as LightningCLI would build it.

    Args:
        config: A config file, or the name of one in Kestrel's ``configs/`` (``"ssdlite_mbv3"``).
        weights: A Kestrel checkpoint (``best.ckpt``) or state dict of the whole network.
        pretrained_backbone: Overrides the config's ``model.backbone.pretrained`` (False: no
            ImageNet weights, nothing downloaded).
        data: A data module (:func:`data_from_config`) whose properties fill what the CLI links
            (class names and ids, keypoint names, input size, ...).
        **model_args: What the data would give the task, without a data module: ``class_names``
            (detection, segmentation; or ``num_classes`` for placeholder names ``class_1``, ...),
            ``image_size``, ``keypoint_names`` (pose); any other ``model.*`` key too.
    """
    path = config_path(config)
    task = config_task(path)
    section = read_config(path).get("model", {})
    backbone = section.setdefault("backbone", {})
    if "class_path" not in backbone:  # a backbone by name; a class_path one keeps its own arguments
        backbone["pretrained"] = pretrained_backbone
    if data is not None:
        for source, target in task_module(task).LINKS.items():
            section[target.removeprefix("model.")] = getattr(data, source.removeprefix("data."))
    count = model_args.pop("num_classes", None)
    if count is not None and "class_names" not in model_args:
        model_args["class_names"] = [f"class_{i}" for i in range(1, count + 1)]
    section.update(model_args)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(task_class(task), "model", fail_untyped=False)
    built = parser.instantiate(parser.parse_object({"model": section})).model
    if weights is not None:
        built.load_init_weights(weights)
    return built


def model_from_config(
    config: str | Path, weights: str | None = None, pretrained_backbone: bool | str = False, **model_args: Any
) -> nn.Module:
    """The network a task config describes: :func:`task_from_config`'s ``task.model``."""
    return task_from_config(config, weights, pretrained_backbone, **model_args).model
