"""Every registered backbone under every head exports to ONNX, and ONNX Runtime gives PyTorch's outputs.

Detections one for one (same classes, boxes within 0.01 px, the bound ``export`` checks every float file
against), segmentation labels on at least 99.9% of pixels, keypoints within 0.1 px, on images of other sizes and
batch sizes than the one traced. (Float32 rounding through the deepest backbones moves boxes by up to 2.5e-3 px:
EfficientNet-Lite4 and FBNetV3-G under the slow marker; the others stay within 1e-3 px.)
"""

import ctypes
import gc
import sys

import numpy as np
import onnx
import pytest
import torch
from sweep import REPRESENTATIVES, sweep
from torch import nn

from backbones import Backbone, list_backbones
from heads.deeplabv3plus import DeepLabV3Plus
from heads.pose import SimpleBaseline
from heads.ssdlite import SSDLite
from tasks.deploy import runtime
from tasks.deploy.agreement import agreement, faithful
from tasks.deploy.export import export_onnx, onnx_to_openvino
from tasks.deploy.quantize import conv_nodes
from tasks.deploy.runtime import ExportedModel, openvino_core, read_metadata, run_images, unbatch

BOX_TOLERANCE = 1e-2  # px (see the module docstring)
EXTRA = "timm:mobilenetv4_conv_small"  # a timm model by name (slow: the registered mobilenet_v4_conv_small is it)
FIVE = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]


def images(*sizes: tuple[int, int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator) for h, w in sizes]


def spread(network: nn.Module, warm_up) -> nn.Module:
    """Outputs that are not degenerate: Kaiming convolutions and batch norms whose statistics are those of
    a few batches (freshly built, activations vanish and every score ties with every other; with the
    usual momentum, three batches leave the statistics near their initial values and deep networks'
    activations in the hundreds, unlike a trained network's)."""
    torch.manual_seed(0)
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in network.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    network.train()
    with torch.no_grad():
        for _ in range(3):
            warm_up(network, torch.randint(0, 256, (16, 3, 96, 96), dtype=torch.uint8))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return network.eval()


def detector(name: str) -> SSDLite:
    model = SSDLite(Backbone(name, levels=[16, 32]), num_classes=3, image_size=96, detections_per_img=100)
    return spread_head(spread(model, lambda m, x: m.head(list(m.backbone(m.input(x)).values()))))


def spread_head(model: SSDLite) -> SSDLite:
    """Scores that spread rather than saturate, as torchvision's test model does, and box offsets of a trained
    detector's size (|code| < 2): a random head's are ten times larger, and decoding takes their exp(), which blows
    float32's 1e-5 relative differences up to 4e-3 px."""
    with torch.no_grad():
        for block in model.head.classification_head.module_list:
            block[1].weight.mul_(0.05)
        for block in model.head.regression_head.module_list:
            block[1].weight.mul_(0.1)
    return model


def segmenter(name: str, flip_test: bool = False) -> DeepLabV3Plus:
    model = DeepLabV3Plus(Backbone(name, levels=[4, 32], output_stride=16), num_classes=3, image_size=96,
                          flip_test=flip_test)
    return spread(model, lambda m, x: m(x))


def pose(name: str) -> SimpleBaseline:
    return spread(SimpleBaseline(Backbone(name, levels=[32]), FIVE, deconv_channels=32), lambda m, x: m(x))


TASKS = {
    "detect": (detector, {"input_size": [96, 96], "class_names": ["a", "b", "c"], "category_ids": [1, 2, 3]},
               images((80, 120), (131, 70), (96, 96))),
    "segment": (segmenter, {"input_size": [96, 96], "class_names": ["a", "b", "c"], "category_ids": [1, 2, 3]},
                images((80, 120), (131, 70), (96, 96))),
    "pose": (pose, {"input_size": [128, 96], "keypoint_names": FIVE}, images(*[(128, 96)] * 5)),
}


# Pose puts its head on the deepest level alone, a graph the detector's export covers for every backbone: by
# default pose is exported on one torchvision and one timm backbone (on every backbone under the slow marker).
POSE_NAMES = ("mobilenet_v3_large", "mobilenet_v4_conv_small")
CASES = [pytest.param(*case.values, task, marks=case.marks) for task in TASKS
         for case in sweep([*list_backbones(), EXTRA], POSE_NAMES if task == "pose" else REPRESENTATIVES)]


@pytest.mark.parametrize("name,task", CASES)
def test_onnx_runtime_gives_pytorchs_outputs(name, task, tmp_path):
    build, metadata, inputs = TASKS[task]
    network = build(name)
    path = export_onnx(network, tmp_path / "model.onnx", {"task": task, **metadata})
    exported = ExportedModel(path, threads=1)
    with torch.no_grad():
        expected = run_images(network, inputs)
    stats = agreement(task, expected, run_images(exported, inputs), box_tolerance=BOX_TOLERANCE)
    if task == "detect":
        assert stats["detections"] > 20, "degenerate comparison"
    assert faithful(task, stats), stats
    if task == "pose":  # a batch of five crops, as traced with one
        assert len(inputs) == 5 and stats["max_keypoint_diff"] <= 0.1


def test_segmentation_flip_test_exports(tmp_path):
    """The flip test (a batch of the images and their mirror images) runs inside the exported network."""
    _, metadata, inputs = TASKS["segment"]
    network = segmenter("mobilenet_v3_large", flip_test=True)
    path = export_onnx(network, tmp_path / "model.onnx", {"task": "segment", **metadata})
    with torch.no_grad():
        expected = run_images(network, inputs)
        network.flip_test = False
        plain = run_images(network, inputs)
    stats = agreement("segment", expected, run_images(ExportedModel(path, threads=1), inputs))
    assert faithful("segment", stats), stats
    assert not faithful("segment", agreement("segment", expected, plain)), "the flip test changed nothing"
    # its softmaxes written out: ONNX Runtime's Softmax off the last axis is 20x slower (heads.deeplabv3plus)
    assert "Softmax" not in {node.op_type for node in onnx.load(path).graph.node}


@pytest.mark.parametrize("task", list(TASKS))
def test_openvino_gives_pytorchs_outputs(task, tmp_path):
    build, metadata, inputs = TASKS[task]
    network = build("mobilenet_v3_large")
    metadata = {"task": task, **metadata}
    path = onnx_to_openvino(export_onnx(network, tmp_path / "model.onnx", metadata), tmp_path / "model.xml", metadata)
    assert read_metadata(path) == metadata and path.with_suffix(".bin").is_file()
    exported = ExportedModel(path, threads=1)
    with torch.no_grad():
        expected = run_images(network, inputs)
    stats = agreement(task, expected, run_images(exported, inputs), box_tolerance=1e-3)
    assert faithful(task, stats), stats


def test_openvino_compiles_for_a_shape_that_keeps_coming(tmp_path, monkeypatch):
    """A shape called often enough runs in a model compiled for it alone, with the same detections; other shapes,
    and shapes beyond the limit, keep the file's own."""
    monkeypatch.setattr(runtime, "OPENVINO_STATIC_AFTER", 3)
    monkeypatch.setattr(runtime, "OPENVINO_STATIC_SHAPES", 1)
    build, metadata, _ = TASKS["detect"]
    network = build("mobilenet_v3_small")
    metadata = {"task": "detect", **metadata}
    path = onnx_to_openvino(export_onnx(network, tmp_path / "model.onnx", metadata), tmp_path / "model.xml", metadata)
    exported = ExportedModel(path, threads=1)
    often, once, later = (torch.stack(images(size, size, seed=1)) for size in [(70, 90), (64, 64), (90, 70)])
    with torch.no_grad():
        expected = {name: network(batch) for name, batch in [("often", often), ("once", once), ("later", later)]}
    for call in range(5):
        stats = agreement("detect", unbatch(expected["often"]), unbatch(exported(often)), box_tolerance=1e-3)
        assert faithful("detect", stats), (call, stats)
    assert list(exported._static) == [tuple(often.shape)]
    assert exported._static[tuple(often.shape)].inputs[0].get_partial_shape().is_static
    for name, batch in [("once", once)] + [("later", later)] * 4:
        stats = agreement("detect", unbatch(expected[name]), unbatch(exported(batch)), box_tolerance=1e-3)
        assert faithful("detect", stats), (name, stats)
    assert list(exported._static) == [tuple(often.shape)]  # no second one beyond the limit


@pytest.mark.skipif(sys.platform != "linux", reason="reads the thread's signal stack through glibc")
def test_openvino_files_share_one_core_and_its_signal_stack(tmp_path):
    """Each OpenVINO Core's first compiled model installs an alternate signal stack, and a destroyed Core puts
    back the one it found: two Cores destroyed in the order they were made left a freed stack installed, and
    the next DataLoader worker's exit crashed the process. Kestrel's files share one Core that lives on."""
    build, metadata, _ = TASKS["pose"]
    metadata = {"task": "pose", **metadata}
    path = onnx_to_openvino(export_onnx(build("mobilenet_v3_small"), tmp_path / "model.onnx", metadata),
                            tmp_path / "model.xml", metadata)
    first = ExportedModel(path, threads=1)
    installed = signal_stack()
    second = ExportedModel(path, threads=1)
    assert signal_stack() == installed  # no second stack: no second Core
    del first, second
    gc.collect()
    assert signal_stack() == installed and openvino_core() is openvino_core()


def signal_stack() -> tuple[int, int]:
    """The calling thread's alternate signal stack (sigaltstack): its address and size."""

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    current = Stack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(current)) == 0
    return current.sp or 0, current.size


def test_the_file_carries_the_contracts_interface_and_metadata(tmp_path):
    network = detector("mobilenet_v3_small")
    metadata = {"task": "detect", **TASKS["detect"][1]}
    path = export_onnx(network, tmp_path / "model.onnx", metadata)
    model = onnx.load(str(path))
    inputs = {i.name: i for i in model.graph.input}
    outputs = {o.name: o for o in model.graph.output}
    assert list(inputs) == ["images"] and list(outputs) == ["boxes", "scores", "labels", "num_detections"]
    assert inputs["images"].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    shape = [d.dim_param or d.dim_value for d in inputs["images"].type.tensor_type.shape.dim]
    assert shape == ["batch", 3, "height", "width"]
    types = {name: o.type.tensor_type.elem_type for name, o in outputs.items()}
    assert types == {"boxes": onnx.TensorProto.FLOAT, "scores": onnx.TensorProto.FLOAT,
                     "labels": onnx.TensorProto.INT64, "num_detections": onnx.TensorProto.INT64}
    assert "NonMaxSuppression" in {n.op_type for n in model.graph.node}
    assert read_metadata(path) == metadata
    out = ExportedModel(path)(torch.stack(images((70, 90), (70, 90))))
    assert out["boxes"].shape == (2, 100, 4) and out["scores"].shape == (2, 100) and out["num_detections"].shape == (2,)
    scores, count = out["scores"][0], int(out["num_detections"][0])
    assert (scores[:count].diff() <= 0).all() and (scores[count:] == 0).all() and (out["labels"][0, count:] == 0).all()


def test_segmentation_and_pose_interfaces(tmp_path):
    seg = export_onnx(segmenter("mobilenet_v3_small"), tmp_path / "seg.onnx",
                      {"task": "segment", **TASKS["segment"][1]})
    labels = ExportedModel(seg)(torch.stack(images((50, 75), (50, 75))))
    assert list(labels) == ["labels"] and labels["labels"].shape == (2, 50, 75)
    assert labels["labels"].dtype == torch.int64
    kp = export_onnx(pose("mobilenet_v3_small"), tmp_path / "pose.onnx", {"task": "pose", **TASKS["pose"][1]})
    keypoints = ExportedModel(kp)(torch.stack(images((128, 96))))
    assert list(keypoints) == ["keypoints"] and keypoints["keypoints"].shape == (1, 5, 3)


def test_an_unknown_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])), str(path))
    with pytest.raises(ValueError, match="other.onnx' carries no 'kestrel' metadata"):
        read_metadata(path)
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="broken.onnx' is not a readable ONNX file"):
        read_metadata(tmp_path / "broken.onnx")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        ExportedModel(tmp_path / "missing.onnx")


def test_first_and_last_convolutions_are_found_in_the_graph(tmp_path):
    path = export_onnx(detector("mobilenet_v3_small"), tmp_path / "model.onnx", {"task": "detect",
                                                                                    **TASKS["detect"][1]})
    model = onnx.load(str(path))
    first, last = conv_nodes(model, "first_conv"), conv_nodes(model, "last_convs")
    assert len(first) == 1 and "features.0" in first[0]
    # SSDLite's 1x1 prediction convolutions: classification and regression on each of the six levels
    assert len(last) == 12 and all("head" in name for name in last)


@pytest.mark.parametrize("agree", [True, False])
def test_agreement_catches_a_different_detection(agree):
    boxes = torch.tensor([[10.0, 10, 50, 50], [20, 20, 80, 90]])
    reference = [{"boxes": boxes, "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([1, 2])}]
    moved = boxes + (0.0 if agree else torch.tensor([[0, 0, 0, 0], [0, 0.01, 0, 0]]))
    candidate = [{"boxes": moved, "scores": torch.tensor([0.9, 0.5]), "labels": torch.tensor([1, 2])}]
    stats = agreement("detect", reference, candidate, box_tolerance=1e-3)
    assert faithful("detect", stats) is agree
    relabelled = [{**candidate[0], "labels": torch.tensor([1, 3])}]
    assert not faithful("detect", agreement("detect", reference, relabelled))
    assert agreement("segment", [{"labels": torch.zeros(10, 10)}],
                     [{"labels": torch.zeros(10, 10).index_fill(0, torch.tensor([0]), 1)}])["pixel_agreement"] == 0.9
    assert np.isclose(agreement("pose", [{"keypoints": torch.zeros(2, 3)}],
                                [{"keypoints": torch.full((2, 3), 0.5)}])["max_keypoint_diff"], 0.5)
