"""SSDLite: torchvision parity through init_from, every backbone, class remapping."""

from functools import partial

import pytest
import torch
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from backbones import Backbone, build_backbone, list_backbones
from heads.ssdlite import SSDLite
from tasks.detect import DetectionTask

TORCHVISION_LAYOUT = {"name": "mobilenet_v3_large", "levels": [16, 32], "feature_location": "expansion",
                      "options": {"reduced_tail": True}}


def torchvision_reference(num_classes: int) -> torch.nn.Module:
    """torchvision's SSDLite with non-trivial outputs.

    Freshly built, its activations vanish (scores collapse to the anchors whatever the input), so
    the convolutions get Kaiming init, a few train-mode forwards set the batch-norm statistics, and
    the class logits are scaled down so scores spread instead of saturating.
    """
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    with torch.no_grad():
        for block in model.head.classification_head.module_list:
            block[1].weight.mul_(0.05)
        model.train()
        for _ in range(3):
            model.backbone(torch.rand(4, 3, 320, 320))
    return model.eval()


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return [torch.rand(3, 320, 320), torch.rand(3, 240, 400), torch.rand(3, 333, 297)]


def test_torchvision_weights_through_init_from_give_torchvision_detections(tmp_path, images):
    reference = torchvision_reference(num_classes=7)
    path = tmp_path / "ssdlite_tv.pth"
    torch.save(reference.state_dict(), path)
    head = partial(SSDLite, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    task = DetectionTask(Backbone(**TORCHVISION_LAYOUT), num_classes=6, head=head, init_from=str(path))
    task.setup("test")
    model = task.model.eval()
    with torch.no_grad():
        expected, got = reference(images), model(images)
    for e, g in zip(expected, got):
        assert len(e["boxes"]) > 50 and e["scores"].std() > 1e-3  # the comparison is not degenerate
        torch.testing.assert_close(g["boxes"], e["boxes"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g["scores"], e["scores"], atol=1e-4, rtol=0)
        torch.testing.assert_close(g["labels"], e["labels"])


def test_torchvision_coco_layout_remaps_to_category_ids(images):
    """torchvision's COCO weights index classes by category id (91 with background): pick the data's."""
    reference = torchvision_reference(num_classes=91)
    ids = [1, 3, 18, 90]
    model = SSDLite(Backbone(**TORCHVISION_LAYOUT), num_classes=len(ids)).eval()
    model.load_state_dict(model.from_torchvision(reference.state_dict(), class_ids=ids))
    x = torch.stack([torch.nn.functional.interpolate(i[None], (320, 320))[0] for i in images])
    with torch.no_grad():
        ours = model.head(list(model.backbone(x).values()))["cls_logits"]
        theirs = reference.head(list(reference.backbone(x).values()))["cls_logits"]
    torch.testing.assert_close(ours, theirs[..., [0, *ids]], rtol=0, atol=1e-5)


def test_torchvision_weights_need_the_matching_backbone():
    reference = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    model = SSDLite(Backbone("mobilenet_v3_large", levels=[16, 32], feature_location="expansion"), num_classes=2)
    with pytest.raises(ValueError, match="reduced_tail: true"):
        model.from_torchvision(reference.state_dict())


def test_init_from_rejects_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "other.pth"
    other = SSDLite(Backbone("mobilenet_v3_small", levels=[16, 32]), num_classes=2)
    torch.save(other.state_dict(), path)
    task = DetectionTask(Backbone("mobilenet_v2", levels=[16, 32]), num_classes=2, init_from=str(path))
    with pytest.raises(ValueError, match=r"other.pth' do not fit SSDLite: .*shape mismatches"):
        task.setup("fit")


@pytest.mark.parametrize("name", list_backbones() + ["timm:mobilenetv4_conv_small"])
def test_ssdlite_on_every_backbone(name):
    """Sized from feature_info: train step and inference at a small input, on every backbone."""
    model = SSDLite(build_backbone(name, levels=(16, 32)), num_classes=3, image_size=128)
    assert len(model.backbone.feature_info) == 6
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 90]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model.train()(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    sum(losses.values()).backward()
    with torch.no_grad():
        detections = model.eval()(images)
    assert all(d["boxes"].shape[1] == 4 and (d["labels"] >= 1).all() and (d["labels"] <= 3).all()
               for d in detections)


def test_ssdlite_arguments():
    with pytest.raises(ValueError, match="num_levels"):
        SSDLite(build_backbone("mobilenet_v3_small", levels=(16, 32)), num_classes=3, num_levels=3)
    model = SSDLite(build_backbone("mobilenet_v2"), num_classes=3, num_levels=3)
    assert model.backbone.feature_info.names() == ["C3", "C4", "C5", "C6", "C7", "C8", "C9"]
