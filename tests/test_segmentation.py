"""Segmentation: DeepLabV3+ head (smp parity, every backbone), the metric, data quirks and bad input."""

import copy
import json

import cv2
import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from PIL import Image
from sweep import backbones

from backbones import Backbone, build_backbone
from heads.deeplabv3plus import DeepLabV3Plus
from tasks.data.masks import read_mask
from tasks.data.segmentation import (
    SegmentationData,
    SegmentationDataset,
    coco_segmentation_split,
    segmentation_transform,
)
from tasks.data.voc import VOC_PALETTE
from tasks.evaluation import SegmentationEvaluator


@pytest.mark.parametrize("output_stride", [16, 8])
def test_same_logits_as_smp_on_the_same_weights(output_stride):
    """smp's DeepLabV3Plus on its MobileNetV2 encoder, weights copied into Kestrel's head."""
    rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    reference = smp.DeepLabV3Plus("mobilenet_v2", encoder_weights=None, encoder_output_stride=output_stride,
                                  classes=6, decoder_atrous_rates=rates)
    reference.train()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for _ in range(3):
            reference(torch.randn(4, 3, 96, 96))
    reference.eval()
    model = DeepLabV3Plus(Backbone("mobilenet_v2", levels=[4, 32], output_stride=output_stride), num_classes=5,
                          image_size=224, image_mean=[0, 0, 0], image_std=[1, 1, 1]).eval()
    state = {("backbone.body." + k.removeprefix("encoder.")) if k.startswith("encoder.") else k: v
             for k, v in reference.state_dict().items()}
    model.load_state_dict(state, strict=True)
    x = torch.randint(0, 256, (2, 3, 160, 224), dtype=torch.uint8)
    with torch.no_grad():
        expected = reference(x.float() / 255)
        got = model.logits(model.input(x))["out"]
        labels = model(x)["labels"]  # the longer side is the input size already: smp's logits, argmax
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert labels.dtype == torch.int64 and (labels == expected.argmax(1)).float().mean() > 0.999


def warmed_up(**options) -> DeepLabV3Plus:
    """A MobileNetV2 DeepLabV3+ in evaluation mode whose batch-norm statistics are not the identity."""
    torch.manual_seed(0)
    model = DeepLabV3Plus(Backbone("mobilenet_v2", levels=[4, 32], output_stride=16), num_classes=3,
                          aspp_dropout=0.0, **options)
    with torch.no_grad():
        for _ in range(3):
            model.train()(torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8))
    return model.eval()


def test_evaluation_keeps_the_aspect_ratio():
    """A 100x200 image is scaled to 64x128 and padded to 128x128, not squashed to 128x128: its labels
    equal the logits of the scaled image alone (the padding only adds mean-colour pixels below)."""
    model = warmed_up(image_size=128)
    image = torch.randint(0, 256, (1, 3, 100, 200), dtype=torch.uint8)
    with torch.no_grad():
        labels = model(image)["labels"]
        x = model.input(image)
        scaled = torch.nn.functional.interpolate(x, size=(64, 128), mode="bilinear", align_corners=False)
        padded = torch.nn.functional.pad(scaled, (0, 0, 0, 64))
        logits = model.logits(padded)["out"][..., :64, :]
        expected = torch.nn.functional.interpolate(logits, size=(100, 200), mode="bilinear").argmax(1)
        squashed = torch.nn.functional.interpolate(model.logits(torch.nn.functional.interpolate(
            x, size=(128, 128), mode="bilinear"))["out"], size=(100, 200), mode="bilinear").argmax(1)
    assert labels.shape == (1, 100, 200)
    assert torch.equal(labels, expected)
    assert not torch.equal(labels, squashed)


def test_flip_test_averages_the_mirror_images_probabilities():
    """With ``flip_test`` the labels are the argmax of the mean of the class probabilities of the image and
    of its mirror image (mirrored back), each from a forward pass of its own; the result is mirror-symmetric,
    which the plain model's labels are not."""
    plain = warmed_up(image_size=96)
    flipped = copy.deepcopy(plain)
    flipped.flip_test = True
    image = torch.randint(0, 256, (2, 3, 96, 96), dtype=torch.uint8)  # the input size: no resizing, no padding
    with torch.no_grad():
        labels = flipped(image)["labels"]
        mirrored = flipped(image.flip(-1))["labels"].flip(-1)
        p = plain.logits(plain.input(image))["out"].softmax(1)
        q = plain.logits(plain.input(image.flip(-1)))["out"].softmax(1).flip(-1)
        plain_labels = plain(image)["labels"]
        plain_mirrored = plain(image.flip(-1))["labels"].flip(-1)
    assert labels.shape == (2, 96, 96) and labels.dtype == torch.int64
    assert (labels == (p + q).argmax(1)).float().mean() > 0.999
    # of 18432 pixels: the plain model's labels change on about 20 when the image is mirrored
    assert int((labels != mirrored).sum()) <= 2
    assert int((plain_labels != plain_mirrored).sum()) >= 10, "degenerate comparison"
    assert (labels != plain_labels).any()


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("name", backbones("timm:mobilenetv4_conv_small"))
def test_head_on_every_backbone(name, output_stride):
    backbone = build_backbone(name, levels=(4, 16, 32), output_stride=output_stride)
    model = DeepLabV3Plus(backbone, num_classes=3, image_size=96, aux_level="C4")
    images = torch.randint(0, 256, (2, 3, 97, 129), dtype=torch.uint8)
    out = model.train()(images)
    assert out["out"].shape == (2, 4, 97, 129) and out["aux"].shape == (2, 4, 97, 129)
    (out["out"].mean() + out["aux"].mean()).backward()
    with torch.no_grad():
        labels = model.eval()(images[:1])["labels"]
    assert labels.shape == (1, 97, 129) and labels.dtype == torch.int64 and 0 <= labels.min() <= labels.max() <= 3


def test_head_errors():
    with pytest.raises(ValueError, match="output stride 16 or 8.*model.backbone.output_stride"):
        DeepLabV3Plus(build_backbone("mobilenet_v2", levels=(4, 32)), num_classes=3)
    with pytest.raises(ValueError, match="stride-4 level.*model.backbone.levels"):
        DeepLabV3Plus(build_backbone("mobilenet_v2", levels=(8, 32), output_stride=16), num_classes=3)
    with pytest.raises(ValueError, match="cannot be built with"):
        build_backbone("timm:ghostnet_100", output_stride=16)


def numpy_reference(pred, target, num_labels):
    """IoU per class by boolean masks, void ignored; classes absent from both are NaN."""
    valid = target != 255
    ious = []
    for c in range(num_labels):
        p, t = (pred == c) & valid, (target == c) & valid
        union = (p | t).sum()
        ious.append(np.nan if union == 0 else (p & t).sum() / union)
    return np.array(ious), (pred[valid] == target[valid]).mean()


@pytest.mark.parametrize("seed", range(4))
def test_evaluator_equals_a_numpy_reference(seed):
    """The evaluator, fed batch by batch as ``test`` feeds it, gives the IoUs of boolean masks over every pixel."""
    rng = np.random.default_rng(seed)
    labels = 6
    target = rng.integers(0, labels - 1, (5, 37, 53))  # the last class never appears in the ground truth
    target[rng.random(target.shape) < 0.1] = 255
    pred = np.where(rng.random(target.shape) < 0.6, target, rng.integers(0, labels - 2, target.shape))
    pred[pred == 255] = 0
    evaluator = SegmentationEvaluator([f"c{i}" for i in range(1, labels)], "random masks")
    for batch in (range(0, 2), range(2, 5)):
        evaluator.update([{"labels": torch.as_tensor(pred[i])} for i in batch],
                         [{"mask": torch.as_tensor(target[i]), "image_id": i, "file": f"{i}.png"} for i in batch])
    metrics = evaluator.compute()
    iou, accuracy = numpy_reference(pred, target, labels)
    assert metrics["per_class_iou"]["c5"] is None  # in neither prediction nor ground truth
    for i in range(labels - 1):
        assert metrics["per_class_iou"][["background", "c1", "c2", "c3", "c4"][i]] == pytest.approx(iou[i], abs=1e-12)
    assert metrics["miou"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert metrics["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    report = evaluator.report()
    assert report.counts == {"images": 5} and len(report.samples) == 4
    assert report.confusion.sum() == (target != 255).sum()


# ----------------------------------------------------------------------------- data
def write_palette(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    png = Image.fromarray(array.astype(np.uint8), mode="P")
    png.putpalette(VOC_PALETTE)
    png.save(path)


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC"
    (root / "JPEGImages").mkdir(parents=True)
    cv2.imwrite(str(root / "JPEGImages" / "a.jpg"), np.zeros((40, 60, 3), np.uint8))
    mask = np.zeros((40, 60), np.uint8)
    mask[10:20, 10:30] = 2
    mask[9, 10:30] = 255
    write_palette(root / "SegmentationClass" / "a.png", mask)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    return root


def test_voc_palette_masks_read_as_indices(voc_root):
    data = SegmentationData(str(voc_root), classes=["cat", "dog"], image_size=32, num_workers=0)
    split = data.split("val")
    image, target = SegmentationDataset(split, None)[0]
    mask = target["mask"]
    assert image.shape == (3, 40, 60) and image.dtype == torch.uint8  # the model fits it to its input itself
    assert mask.shape == (40, 60) and target["image_id"] == "a"  # evaluation keeps the original size
    assert target["file"] == voc_root / "JPEGImages" / "a.jpg"
    assert set(mask.unique().tolist()) == {0, 2, 255}
    assert data.label_names == ["background", "cat", "dog"]


def test_training_crops_pad_the_mask_with_void(voc_root):
    split = SegmentationData(str(voc_root), classes=["cat", "dog"], num_workers=0).split("val")
    dataset = SegmentationDataset(split, segmentation_transform(96, scale_range=(1.0, 1.0)))
    mask = dataset[0][1]["mask"]
    assert mask.shape == (96, 96)
    assert (mask == 255).sum() >= 96 * 96 - 40 * 60  # the padding is void
    assert (mask == 2).sum() == 200


def test_training_crops_have_their_own_size(voc_root):
    """``crop_size`` sets the training crops; ``image_size`` stays the square evaluation fits images into."""
    data = SegmentationData(str(voc_root), classes=["cat", "dog"], image_size=64, crop_size=32,
                            scale_range=(1.0, 1.0), num_workers=0)
    image, target = data.dataset(data.split("val"), train=True)[0]
    mask = target["mask"]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and data.image_size == 64
    assert SegmentationData(str(voc_root), classes=["cat", "dog"], image_size=48, num_workers=0).crop_size == 48


def test_bad_masks_name_the_file(voc_root):
    path = voc_root / "SegmentationClass" / "a.png"
    write_palette(path, np.full((40, 60), 7))
    with pytest.raises(ValueError, match=r"a.png' has values \[7\]"):
        read_mask(path, 3)
    write_palette(path, np.zeros((41, 60)))
    with pytest.raises(ValueError, match=r"a.png' is 60x41 pixels, its image .*a.jpg' 60x40"):  # before training
        SegmentationData(str(voc_root), classes=["cat", "dog"], num_workers=0).check("validate")
    split = SegmentationData(str(voc_root), classes=["cat", "dog"], num_workers=0, check_files=False).split("val")
    with pytest.raises(ValueError, match=r"mask of .*a.jpg' is 60x41, the image 60x40"):  # or when it is read
        SegmentationDataset(split, None)[0]
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match=r"a.png' is a RGB image"):
        read_mask(path, 3)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) of the masks .* do not exist: .*a.png"):
        SegmentationData(str(voc_root), classes=["cat", "dog"], num_workers=0).split("val")


def test_coco_instances_become_class_masks(tmp_path):
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    cv2.imwrite(str(root / "val2017" / "x.jpg"), np.zeros((50, 50, 3), np.uint8))
    data = {
        "images": [{"id": 4, "file_name": "x.jpg", "width": 50, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 4, "category_id": 18, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0,
             "segmentation": [[0, 0, 40, 0, 40, 40, 0, 40]]},
            {"id": 2, "image_id": 4, "category_id": 1, "bbox": [10, 10, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]]},
            # a crowd region as COCO writes them: uncompressed RLE
            {"id": 3, "image_id": 4, "category_id": 1, "bbox": [42, 42, 6, 6], "area": 36, "iscrowd": 1,
             "segmentation": {"size": [50, 50], "counts": [42 * 50 + 42] + [6, 44] * 5 + [6, 102]}},
            {"id": 4, "image_id": 4, "category_id": 90, "bbox": [44, 0, 5, 5], "area": 25, "iscrowd": 0,
             "segmentation": [[44, 0, 49, 0, 49, 5, 44, 5]]},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    split = coco_segmentation_split(root, "val2017", "all")
    mask = split.mask(split.records[0])
    assert mask[5, 5] == 2 and mask[15, 15] == 1  # the smaller person stays in front of the dog
    assert mask[45, 45] == 255  # crowd: void
    assert mask[2, 46] == 3
    voc = coco_segmentation_split(root, "val2017", "voc").mask(split.records[0])
    assert voc[5, 5] == 12 and voc[15, 15] == 15 and voc[2, 46] == 0  # VOC dog 12, person 15; others background
