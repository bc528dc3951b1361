"""Inference copies (batch norms folded, channels-last) give the module's outputs, and the tasks use them."""

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from backbones import Backbone, fold_batch_norms, inference_copy
from heads.deeplabv3plus import DeepLabV3Plus
from heads.pose import SimpleBaseline
from heads.ssdlite import SSDLite
from tasks.deploy.agreement import agreement, faithful
from tasks.deploy.runtime import unbatch
from tasks.detect import DetectionTask


def trained_statistics(network: nn.Module, images: torch.Tensor) -> nn.Module:
    """Batch norms with running statistics other than 0 / 1, so that folding them changes the weights."""
    network.train()
    with torch.no_grad():
        for m in network.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 1.0
        network.backbone(network.input(images))
    return network.eval()


def networks():
    backbone = Backbone("mobilenet_v3_small", levels=[16, 32], feature_location="expansion")
    yield "detect", SSDLite(backbone, num_classes=3, image_size=96)
    yield "segment", DeepLabV3Plus(Backbone("mobilenet_v2", levels=[4, 32], output_stride=16), num_classes=3,
                                   image_size=96)
    yield "pose", SimpleBaseline(Backbone("mobilenet_v3_small", levels=[32]), [f"k{i}" for i in range(5)])


@pytest.mark.parametrize("task,network", list(networks()), ids=lambda v: v if isinstance(v, str) else "")
def test_the_copy_gives_the_modules_outputs(task, network):
    size = (128, 96) if task == "pose" else (96, 96)
    images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    network = trained_statistics(network, images)
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in network.modules())
    copy = inference_copy(network)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in copy.modules()) < norms / 2  # most are folded
    assert sum(isinstance(m, nn.BatchNorm2d) for m in network.modules()) == norms  # the module is untouched
    assert not copy.training and not any(p.requires_grad for p in copy.parameters())
    convs = [m for m in copy.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    with torch.no_grad():
        expected, got = network(images), copy(images)
    if task == "detect":
        assert faithful(task, agreement(task, unbatch(expected), unbatch(got), box_tolerance=1e-3))
    elif task == "segment":
        assert (expected["labels"] == got["labels"]).float().mean() > 0.999
    else:
        torch.testing.assert_close(got["keypoints"], expected["keypoints"], atol=1e-2, rtol=0)


def test_folding_needs_eval_mode_and_leaves_other_norms():
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(block)
    block.eval()
    assert fold_batch_norms(block) == 1  # the second norm follows an activation, not a convolution
    assert isinstance(block[1], nn.Identity) and isinstance(block[3], nn.BatchNorm2d)


def test_a_hooked_layer_is_not_replaced():
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    block[1].register_forward_hook(lambda *args: None)
    assert fold_batch_norms(block) == 0


def test_the_task_trains_channels_last_and_evaluates_with_a_copy():
    task = DetectionTask(Backbone("mobilenet_v3_small", levels=[16, 32]), ["a", "b"], image_size=64)
    task.trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    task.setup("fit")
    assert task.model.backbone.body.body.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    task.on_predict_epoch_start()
    assert task._inference is not None and "_inference" not in dict(task.named_children())
    assert not any(k.startswith("_inference") for k in task.state_dict())  # never in a checkpoint
    images = [torch.randint(0, 256, (3, 64, 80), dtype=torch.uint8)]
    task.model.eval()
    with torch.no_grad():
        expected, got = unbatch(task.model(images)), task.predict_images(images)
    assert faithful("detect", agreement("detect", expected, got, box_tolerance=1e-3))
    task.on_train_epoch_start()
    assert task._inference is None
    plain = DetectionTask(Backbone("mobilenet_v3_small", levels=[16, 32]), ["a", "b"], image_size=64,
                          channels_last=False)
    plain.trainer = task.trainer
    plain.setup("fit")
    assert plain.model.backbone.body.body.features[0][0].weight.is_contiguous()


def test_torchvision_layout_round_trip():
    """to_torchvision inverts from_torchvision: torchvision's model gets Kestrel's weights back, tensor for tensor."""
    reference = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4)
    model = SSDLite(Backbone("mobilenet_v3_large", levels=[16, 32], feature_location="expansion",
                             options={"reduced_tail": True}), num_classes=3)
    model.load_state_dict(model.from_torchvision(reference.state_dict()))
    back = model.to_torchvision(reference.state_dict())
    assert back.keys() == reference.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in reference.state_dict().items())
    other = SSDLite(Backbone("mobilenet_v3_large", levels=[16, 32], feature_location="expansion"), num_classes=3)
    with pytest.raises(ValueError, match="reduced_tail: true"):
        other.to_torchvision(reference.state_dict())
