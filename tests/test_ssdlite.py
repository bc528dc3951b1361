"""SSDLite: torchvision parity through init_from, every backbone, class remapping."""

from functools import partial

import pytest
import torch
from sweep import backbones
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from backbones import Backbone, build_backbone
from heads.ssdlite import SSDLite
from tasks.deploy.agreement import agreement, faithful
from tasks.deploy.runtime import unbatch
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


def random_images(*sizes: tuple[int, int], seed: int = 1) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


@pytest.fixture(scope="module")
def images():
    return random_images((320, 320), (240, 400), (333, 297))


def test_torchvision_weights_through_init_from_give_torchvision_detections(tmp_path, images):
    """Pre-processing, box decoding, NMS and the map back to each image's pixels, against torchvision's SSD."""
    reference = torchvision_reference(num_classes=7)
    path = tmp_path / "ssdlite_tv.pth"
    torch.save(reference.state_dict(), path)
    head = partial(SSDLite, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    task = DetectionTask(Backbone(**TORCHVISION_LAYOUT), [f"c{i}" for i in range(6)], head=head, init_from=str(path))
    task.initialize()
    model = task.model.eval()
    with torch.no_grad():
        expected = reference([image.float() / 255 for image in images])  # torchvision takes floats in [0, 1]
        listed = model(images)  # a list of any sizes, as torchvision's detectors take
        one_by_one = [model(image[None]) for image in images]  # a batch, as the exported graph takes
    for i, e in enumerate(expected):
        assert len(e["boxes"]) > 50 and e["scores"].std() > 1e-3  # the comparison is not degenerate
        for got, row in ((listed, i), (one_by_one[i], 0)):
            n = int(got["num_detections"][row])
            assert n == len(e["boxes"]) and (got["labels"][row, n:] == 0).all() and (got["scores"][row, n:] == 0).all()
        if i == 0:  # 320x320 needs no resize, and it is the first of torchvision's batch too: the same numbers,
            # detection for detection (equal scores may come out of top-k in either order, hence matched)
            stats = agreement("detect", [e], unbatch({k: v[:1] for k, v in listed.items()}), box_tolerance=1e-4)
            assert faithful("detect", stats) and stats["max_score_diff"] <= 1e-5, stats
    # Kestrel resizes with gathers that round sampling positions on their own (heads._input.resize), 1e-6 relative
    # from F.interpolate, and a batch of one runs other convolution kernels than torchvision's batch of three
    # (1e-4 apart already in the backbone's features): near-tied detections may swap places, so they are matched
    # one to one (same class, boxes within 1e-3 px) rather than by position.
    pairs = [(expected, unbatch(listed))] + [([e], unbatch(o)) for e, o in zip(expected, one_by_one)]
    for reference, candidate in pairs:
        stats = agreement("detect", reference, candidate, box_tolerance=1e-3)
        assert faithful("detect", stats), stats


def test_torchvision_coco_layout_remaps_to_category_ids(images):
    """torchvision's COCO weights index classes by category id (91 with background): pick the data's."""
    reference = torchvision_reference(num_classes=91)
    ids = [1, 3, 18, 90]
    model = SSDLite(Backbone(**TORCHVISION_LAYOUT), num_classes=len(ids)).eval()
    model.load_state_dict(model.from_torchvision(reference.state_dict(), class_ids=ids))
    x = torch.stack([torch.nn.functional.interpolate(i[None].float() / 255, (320, 320))[0] for i in images])
    with torch.no_grad():
        ours = model.head(list(model.backbone(x).values()))["cls_logits"]
        theirs = reference.head(list(reference.backbone(x).values()))["cls_logits"]
    torch.testing.assert_close(ours, theirs[..., [0, *ids]], rtol=0, atol=1e-5)


def test_torchvision_coco_weights_fine_tune_onto_other_classes(tmp_path):
    """torchvision's 91-class COCO head on data with other classes: fit keeps everything but the class layers,
    which start afresh; test refuses the weights."""
    reference = torchvision_reference(num_classes=91)
    path = tmp_path / "ssdlite_coco.pth"
    torch.save(reference.state_dict(), path)
    build = partial(DetectionTask, Backbone(**TORCHVISION_LAYOUT), ["apple", "pear"], init_from=str(path))
    with pytest.raises(ValueError, match="trained for other labels than this model's 2 classes"):
        build().initialize()
    task = build()
    task.initialize(fine_tune=True)
    theirs = reference.state_dict()
    ours = task.model.state_dict()
    assert torch.equal(ours["head.regression_head.module_list.0.1.weight"],
                       theirs["head.regression_head.module_list.0.1.weight"])
    assert ours["head.classification_head.module_list.0.1.bias"].numel() == 3 * 6  # 3 labels x 6 default boxes


def test_torchvision_weights_need_the_matching_backbone():
    reference = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    model = SSDLite(Backbone("mobilenet_v3_large", levels=[16, 32], feature_location="expansion"), num_classes=2)
    with pytest.raises(ValueError, match="reduced_tail: true"):
        model.from_torchvision(reference.state_dict())


def test_init_from_rejects_weights_that_do_not_fit(tmp_path):
    path = tmp_path / "other.pth"
    other = SSDLite(Backbone("mobilenet_v3_small", levels=[16, 32]), num_classes=2)
    torch.save(other.state_dict(), path)
    task = DetectionTask(Backbone("mobilenet_v2", levels=[16, 32]), ["a", "b"], init_from=str(path))
    with pytest.raises(ValueError, match=r"other.pth' do not fit SSDLite: .*shape mismatches"):
        task.initialize()


@pytest.mark.parametrize("name", backbones("timm:mobilenetv4_conv_small"))
def test_ssdlite_on_every_backbone(name):
    """Sized from feature_info: train step and inference at a small input, on every backbone."""
    model = SSDLite(build_backbone(name, levels=(16, 32)), num_classes=3, image_size=128)
    assert len(model.backbone.feature_info) == 6
    images = random_images((128, 128), (128, 128))
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 90]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model.train()(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    sum(losses.values()).backward()
    with torch.no_grad():
        detections = model.eval()(torch.stack(images))
    n = detections["num_detections"]
    assert detections["boxes"].shape == (2, 300, 4) and n.shape == (2,)
    for labels, count in zip(detections["labels"], n):
        assert (labels[:count] >= 1).all() and (labels[:count] <= 3).all() and (labels[count:] == 0).all()


def test_ssdlite_arguments():
    with pytest.raises(ValueError, match="num_levels"):
        SSDLite(build_backbone("mobilenet_v3_small", levels=(16, 32)), num_classes=3, num_levels=3)
    model = SSDLite(build_backbone("mobilenet_v2"), num_classes=3, num_levels=3)
    assert model.backbone.feature_info.names() == ["C3", "C4", "C5", "C6", "C7", "C8", "C9"]


@pytest.fixture(scope="module")
def detector():
    """SSDLite on torchvision's layout with weights whose scores spread (see ``torchvision_reference``)."""
    model = SSDLite(Backbone(**TORCHVISION_LAYOUT), num_classes=6, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    model.load_state_dict(model.from_torchvision(torchvision_reference(num_classes=7).state_dict()))
    return model.eval()


def _rows(detections, image, count):
    """The first ``count`` detections of an image as sortable rows (ties in score may come in either order)."""
    return sorted(zip(detections["scores"][image, :count].tolist(), detections["labels"][image, :count].tolist(),
                      detections["boxes"][image, :count].tolist()))


@pytest.mark.parametrize("budget, per_class", [(None, 300), (50, 300), (None, 20)])
def test_fixed_shapes_give_the_usual_detections_best_first(detector, budget, per_class):
    """NMS keeps a box by the boxes that score higher only, so the fixed-shape path's detections are the first of
    the usual ones; also when the per-class candidates (``topk_candidates``) are fewer than the budget."""
    images = torch.randint(0, 256, (2, 3, 240, 320), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    detector.topk_candidates = per_class
    try:
        with torch.no_grad():
            usual = detector(images)
            with detector.fixed_shapes(budget):
                fixed = detector(images)
    finally:
        detector.topk_candidates = 300
    assert fixed["boxes"].shape == usual["boxes"].shape
    for image in range(2):
        count = int(fixed["num_detections"][image])
        assert 0 < count <= int(usual["num_detections"][image]) and count <= (budget or 300)
        assert _rows(fixed, image, count) == _rows(usual, image, count)
        assert fixed["scores"][image, count:].eq(0).all() and fixed["labels"][image, count:].eq(0).all()
    assert detector.fixed_candidates is None  # the context restores the usual path


@pytest.mark.slow
def test_torch_export_traces_the_whole_detector_with_fixed_shapes(detector):
    images = torch.randint(0, 256, (1, 3, 240, 320), dtype=torch.uint8)
    with torch.no_grad(), detector.fixed_shapes(100):
        exported = torch.export.export(detector, (images,))
        other = torch.randint(0, 256, (1, 3, 240, 320), dtype=torch.uint8)
        expected = detector(other)
    found = exported.module()(other)
    for key in ("boxes", "scores", "labels", "num_detections"):
        torch.testing.assert_close(found[key], expected[key])


def test_the_default_boxes_are_made_once_and_exported_as_a_constant(tmp_path):
    """torchvision's anchors of the input square, made on the first call and kept (not a state-dict entry): the
    exported graph holds them rather than computing them at every call."""
    import onnx

    from tasks.deploy.export import export_onnx

    network = SSDLite(Backbone("mobilenet_v3_large", levels=[16, 32]), num_classes=3, image_size=96).eval()
    images = torch.randint(0, 256, (1, 3, 80, 120), dtype=torch.uint8)
    with torch.no_grad():
        first = network(images)
        x = network.input(images, (96, 96))
        features = list(network.backbone(x).values())
        boxes = network.default_boxes(x, features)
        assert boxes is network.default_boxes(x, features)
        from torchvision.models.detection.image_list import ImageList

        assert torch.equal(boxes, network.anchor_generator(ImageList(x, [(96, 96)]), features)[0])
    assert not any("default_boxes" in key for key in network.state_dict())
    path = export_onnx(network, tmp_path / "model.onnx", {"task": "detect", "input_size": [96, 96]})
    assert not [node.name for node in onnx.load(str(path)).graph.node if "anchor_generator" in node.name]
    with torch.no_grad():
        assert torch.equal(network(images)["boxes"], first["boxes"])


def test_box_decoding_is_torchvisions_bit_for_bit():
    """The detector decodes boxes on (x, y) pairs: the same values as torchvision's ``BoxCoder.decode_single`` and
    ``clip_boxes_to_image``, also where the size code is clipped before ``exp`` and boxes leave the image."""
    from torchvision.ops.boxes import clip_boxes_to_image

    network = SSDLite(Backbone("mobilenet_v3_small", levels=[16, 32]), num_classes=3, image_size=96)
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(500, 2, generator=generator) * 96
    anchors = torch.cat([corner, corner + torch.rand(500, 2, generator=generator) * 40 + 0.5], 1)
    regression = torch.randn(2, 500, 4, generator=generator) * 8
    regression[:, :10, 2:] = 1e3  # beyond bbox_xform_clip
    expected = torch.stack([clip_boxes_to_image(network.box_coder.decode_single(r, anchors), (96, 96))
                            for r in regression])
    assert torch.equal(network._decode(regression, anchors), expected)
    assert torch.equal(network._decode(regression, anchors.expand(2, -1, -1)), expected)
    assert expected.eq(0).any() and expected.eq(96).any() and expected.lt(96).any()
