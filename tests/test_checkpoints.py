"""Checkpoints describe themselves, also for tasks built in Python rather than by the command line."""

from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from backbones import Backbone
from heads.deeplabv3plus import DeepLabV3Plus
from heads.pose import SimpleBaseline
from heads.ssdlite import SSDLite
from tasks.detect import DetectionTask
from tasks.pose import PoseTask
from tasks.segment import SegmentationTask

FIVE = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]


def save(task: pl.LightningModule, path) -> None:
    """What Lightning's checkpoint connector writes for the model: weights, hyperparameters, the hook."""
    checkpoint = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                  "pytorch-lightning_version": pl.__version__}
    task.on_save_checkpoint(checkpoint)
    torch.save(checkpoint, path)


@pytest.mark.parametrize("build", [
    lambda: DetectionTask(Backbone("mobilenet_v3_small", levels=[16, 32], pretrained=False), ["cat", "dog"],
                          category_ids=[17, 18], image_size=128, head=partial(SSDLite, min_ratio=0.15)),
    lambda: SegmentationTask(Backbone("mobilenet_v3_small", levels=[4, 32], output_stride=16), ["road"],
                             image_size=96),
    lambda: PoseTask(Backbone("mobilenet_v3_small", levels=[32]), FIVE, image_size=(64, 64), sigmas=[0.07] * 5,
                     head=partial(SimpleBaseline, deconv_channels=32, flip_test=False)),
], ids=["detect", "segment", "pose"])
def test_a_task_built_in_python_loads_from_its_checkpoint_alone(build, tmp_path):
    task = build()
    for p in task.parameters():
        p.data.normal_(0, 0.02)
    save(task, tmp_path / "task.ckpt")
    loaded = type(task).load_from_checkpoint(tmp_path / "task.ckpt", weights_only=True)
    assert loaded.metadata() == task.metadata()
    assert all(torch.equal(a, b) for a, b in zip(task.state_dict().values(), loaded.state_dict().values()))
    if isinstance(task, DetectionTask):
        assert loaded.model.anchor_generator.scales[0] == 0.15 and loaded.category_ids == [17, 18]
    if isinstance(task, PoseTask):
        assert loaded.model.flip_test is False and loaded.sigmas == [0.07] * 5


def test_a_checkpoint_asks_for_neither_imagenet_weights_nor_init_from(tmp_path):
    """Both were applied when it was trained; the checkpoint's weights replace them."""
    task = DetectionTask(Backbone("mobilenet_v3_small", levels=[16, 32]), ["a"], image_size=96)
    task.hparams["backbone"]["init_args"]["pretrained"] = True  # as a config asking for ImageNet weights would
    task.hparams["init_from"] = "weights_that_are_gone.pth"
    save(task, tmp_path / "task.ckpt")
    hparams = torch.load(tmp_path / "task.ckpt", weights_only=True)["hyper_parameters"]
    assert hparams["backbone"]["init_args"]["pretrained"] is False and hparams["init_from"] is None
    loaded = DetectionTask.load_from_checkpoint(tmp_path / "task.ckpt")  # offline: would fail fetching weights
    assert loaded.init_from is None


@pytest.mark.parametrize("build, labels", [
    (lambda names: DetectionTask(Backbone("mobilenet_v3_small", levels=[16, 32]), names, image_size=96),
     ["cat", "dog", "bird"]),
    (lambda names: SegmentationTask(Backbone("mobilenet_v3_small", levels=[4, 16, 32], output_stride=16), names,
                                    image_size=64, head=partial(DeepLabV3Plus, aux_level="C4")),
     ["road", "car", "sky"]),
    (lambda names: PoseTask(Backbone("mobilenet_v3_small", levels=[32]), names, image_size=(64, 48)),
     ["nose", "tail", "left_ear", "right_ear"]),
])
def test_fine_tuning_on_other_labels_starts_only_the_label_layers_afresh(tmp_path, caplog, build, labels):
    """fit from weights trained for other labels loads everything but the layers sized by the label count; test,
    validate and export refuse them, since those layers would be untrained."""
    trained = build(labels[:2])
    save(trained, tmp_path / "trained.ckpt")
    fresh = build(labels)
    before = {k: v.clone() for k, v in fresh.model.state_dict().items()}
    fresh.init_from = str(tmp_path / "trained.ckpt")
    with pytest.raises(ValueError, match="trained for other labels .* fine-tune it with `fit`"):
        fresh.initialize()
    with caplog.at_level("INFO"):
        fresh.initialize(fine_tune=True)
    assert "the label layers (" in caplog.text and "start afresh, everything else is loaded" in caplog.text
    prefixes = fresh.model.label_layers
    ours, theirs = fresh.model.state_dict(), trained.model.state_dict()
    differ = [k for k in ours if ours[k].shape != theirs[k].shape]
    assert differ and all(k.startswith(prefixes) for k in differ)
    assert all(torch.equal(ours[k], before[k]) for k in differ)  # as initialized
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if k not in differ)  # as trained


def test_other_weights_are_not_taken_for_other_labels(tmp_path):
    """A backbone that differs is an error naming the mismatches, also for fit."""
    other = DetectionTask(Backbone("mobilenet_v3_small", levels=[16, 32]), ["a"], image_size=96)
    save(other, tmp_path / "other.ckpt")
    task = DetectionTask(Backbone("mobilenet_v3_large", levels=[16, 32]), ["a", "b"], image_size=96,
                         init_from=str(tmp_path / "other.ckpt"))
    with pytest.raises(ValueError, match="a checkpoint of backbone 'mobilenet_v3_small', this model's backbone is"):
        task.initialize(fine_tune=True)
