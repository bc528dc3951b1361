"""Phone files: ExecuTorch programs (``.pte``) run by the ExecuTorch runtime and LiteRT files (``.tflite``) run by
the LiteRT interpreter give eager PyTorch's outputs; Core ML packages (``.mlpackage``), which run on Apple devices
only, carry the interface and metadata of the contract.

A file takes one input size; images of other sizes are stretched to it (``fit_image``) and the outputs
mapped back, as an app would. The comparison gives eager PyTorch the same fitted pixels, so that it tests
the file: detections one for one (the first of eager's: the file's NMS visits a fixed budget of candidates),
boxes within 1e-3 of the input size, labels on at least 99.9 % of pixels, keypoints within 0.1 px.
"""

import os
from unittest.mock import patch

import pytest
import torch
from example_backbones import GoodNet
from hypothesis import given, settings
from hypothesis import strategies as st
from test_export import TASKS, detector, images, pose, segmenter, spread, spread_head

from backbones import ensure_pyramid, list_backbones
from heads._input import _constant_taps, _taps, longer_side_extent
from heads.ssdlite import SSDLite
from tasks.cli import pair_input_size
from tasks.deploy.agreement import agreement, budget, faithful, summarize
from tasks.deploy.export import export_task
from tasks.deploy.mobile import (
    _coreml_compatible,
    check_coreml,
    fit_image,
    phone_metadata,
    quantize_program,
    write_coreml,
    write_phone_file,
    write_tflite,
)
from tasks.deploy.runtime import (
    ExportedModel,
    executorch_log_filtered,
    file_size_mb,
    is_exported,
    read_metadata,
    run_images,
)

# Each task on the phone set (MobileNetV3-Large, MobileNetV2, EfficientNet-Lite0, MobileNetV4-small) in both
# formats, and the rest of the registry (ExecuTorch detection), under the slow marker: by default the trained
# detector's files are exported and scored through the command line (test_detect_cli), the four-output layout too
PHONE_SET = ("mobilenet_v3_large", "mobilenet_v2", "efficientnet_lite0", "mobilenet_v4_conv_small")
CASES = [pytest.param(name, task, fmt, marks=pytest.mark.slow)
         for fmt in ("executorch", "tflite") for task in TASKS for name in PHONE_SET]
CASES += [pytest.param(name, "detect", "executorch", marks=pytest.mark.slow)
          for name in list_backbones() if name not in PHONE_SET]
SUFFIX = {"executorch": ".pte", "tflite": ".tflite"}


def write(network, task: str, path, int8_images=None, size=None) -> ExportedModel:
    """``network`` as a phone file (by ``path``'s suffix) of input ``size`` (default: the network's), run."""
    size = size or TASKS[task][1]["input_size"]
    fmt = "tflite" if str(path).endswith(".tflite") else "executorch"
    metadata = phone_metadata(network, {"task": task, **TASKS[task][1], "format": fmt}, size)
    write_phone_file(network, path, metadata, size, int8_images)
    return ExportedModel(path, threads=1)


def against_eager(task: str, network, exported: ExportedModel, size, box_tolerance: float) -> dict:
    """How ``exported`` follows eager ``network`` on the task's test images fitted to ``size``, the same pixels for
    both (eager's first detections, as many as the file's budget holds)."""
    fitted = [fit_image(image, size) for image in TASKS[task][2]]
    with torch.no_grad():
        expected = run_images(network, fitted)
    got = run_images(exported, fitted)
    return agreement(task, budget(expected, got), got, box_tolerance=box_tolerance)


def tiny_detector() -> SSDLite:
    """SSDLite on a four-convolution backbone: the whole pipeline (resize, decoding, the fixed-shape NMS) on a small
    network, so that the default suite lowers one in seconds rather than a minute."""
    network = SSDLite(ensure_pyramid(GoodNet(), "GoodNet"), num_classes=3, image_size=96, detections_per_img=40,
                      image_mean=[0.5] * 3, image_std=[0.25] * 3)
    return spread_head(spread(network, lambda m, x: m.head(list(m.backbone(m.input(x)).values()))))


def test_a_small_detector_lowered_to_executorch_gives_pytorchs_outputs(tmp_path):
    network = tiny_detector()
    exported = write(network, "detect", tmp_path / "model.pte")
    stats = against_eager("detect", network, exported, [96, 96], box_tolerance=0.096)
    assert stats["detections"] > 20 and faithful("detect", stats), summarize("detect", stats)
    the_file_carries_its_interface_and_maps_images_of_other_sizes_back(exported, tmp_path / "model.pte")


@pytest.mark.parametrize("name,task,fmt", CASES)
def test_a_phone_file_gives_pytorchs_outputs(name, task, fmt, tmp_path):
    build, metadata, _ = TASKS[task]
    network = build(name)
    if task == "detect":  # NMS unrolled over 40 candidates rather than 100: converted in half the time
        network.detections_per_img = 40
    path = tmp_path / f"model{SUFFIX[fmt]}"
    exported = write(network, task, path)
    size = metadata["input_size"]
    stats = against_eager(task, network, exported, size, box_tolerance=1e-3 * max(size))
    if task == "detect":
        assert stats["detections"] > 20, "degenerate comparison"
    assert faithful(task, stats), summarize(task, stats)
    if task == "detect" and name == "mobilenet_v3_large":  # the .tflite file (the .pte one: above)
        the_file_carries_its_interface_and_maps_images_of_other_sizes_back(exported, path)


def the_file_carries_its_interface_and_maps_images_of_other_sizes_back(exported: ExportedModel, path) -> None:
    assert is_exported(path)
    metadata = read_metadata(path)
    assert metadata["fixed_input_size"] == [96, 96] and metadata["class_names"] == ["a", "b", "c"]
    assert metadata["outputs"] == ["boxes", "scores", "labels", "num_detections"]
    runtime = "executorch" if path.suffix == ".pte" else "ai-edge-litert"
    assert exported.runtime.startswith(runtime) and "XNNPACK" in exported.runtime
    out = exported(torch.stack(images((96, 96), (96, 96))))
    assert out["boxes"].shape == (2, 40, 4) and out["num_detections"].shape == (2,)
    scores, count = out["scores"][0], int(out["num_detections"][0])
    assert (scores[:count].diff() <= 0).all() and (scores[count:] == 0).all()
    image = images((150, 200))[0]
    fitted = fit_image(image, [96, 96])
    assert fitted.shape == (3, 96, 96) and fitted.dtype == torch.uint8
    (small,), (large,) = run_images(exported, [fitted]), run_images(exported, [image])
    assert torch.allclose(large["boxes"], small["boxes"] * torch.tensor([200 / 96, 150 / 96] * 2))
    assert torch.equal(large["labels"], small["labels"]) and torch.equal(large["scores"], small["scores"])


def test_an_unreadable_program_is_refused_with_its_name(tmp_path):
    (tmp_path / "broken.pte").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="broken.pte' is not a readable ExecuTorch program"):
        read_metadata(tmp_path / "broken.pte")
    (tmp_path / "broken.tflite").write_bytes(b"not a flatbuffer")
    with pytest.raises(ValueError, match="broken.tflite' is not a readable LiteRT file"):
        read_metadata(tmp_path / "broken.tflite")
    with pytest.raises(FileNotFoundError, match="missing.pte"):
        ExportedModel(tmp_path / "missing.pte")


def test_executorchs_load_noise_is_held_back_and_its_warnings_kept(capfd):
    """ExecuTorch's runtime writes its CPU probe to the process's stderr on every load (C++, not Python logging):
    those lines are dropped, any other line of the runtime's is written out."""
    with executorch_log_filtered():
        os.write(2, b"[cpuinfo_utils.cpp:87] Failed to open midr file /sys/devices/soc0/image_version\n")
        os.write(2, b"[threadpool.cpp:66] Resetting threadpool to 2 threads.\n")
        os.write(2, b"[method.cpp:128] Init failed for backend : 0x11\n")
    err = capfd.readouterr().err
    assert "cpuinfo" not in err and "threadpool" not in err and "[method.cpp:128] Init failed" in err


# Core ML on the first phone backbone: every task's post-processing (the detector's NMS, segmentation's
# crop and resize, pose's peak decoding) through coremltools; the detector also with int8 weights
@pytest.mark.parametrize("task,build,int8", [("detect", tiny_detector, True),
                                             pytest.param("segment", lambda: segmenter("mobilenet_v3_large"), False,
                                                          marks=pytest.mark.slow),
                                             ("pose", lambda: pose("mobilenet_v3_large"), False)])
def test_a_core_ml_package_carries_the_contracts_interface(task, build, int8, tmp_path):
    network = build()
    size = TASKS[task][1]["input_size"]
    metadata = phone_metadata(network, {"task": task, **TASKS[task][1], "format": "coreml",
                                        "precision": "int8" if int8 else "fp32"}, size)
    outputs = metadata["outputs"]
    path = write_coreml(network, tmp_path / "model.mlpackage", metadata, size, int8)
    assert path.is_dir() and is_exported(path) and read_metadata(path) == metadata
    assert check_coreml(path).startswith(f"Core ML spec checked: input RGB image {size[0]}x{size[1]}, outputs "
                                         f"{', '.join(outputs)}")
    from coremltools.models.utils import load_spec

    spec = load_spec(str(path))
    types = {output.name: output.type.multiArrayType.dataType for output in spec.description.output}
    float32, int32 = 65568, 131104  # ArrayFeatureType: no float16 outputs (box areas overflow it), no int64
    assert all(types[name] == (int32 if name in ("labels", "num_detections") else float32) for name in outputs), types
    weights = [op for function in spec.mlProgram.functions.values() for block in function.block_specializations.values()
               for op in block.operations if op.type == "constexpr_affine_dequantize"]
    assert bool(weights) == int8  # int8 weights dequantized at load time
    assert write_coreml(network, path, metadata, size, int8) == path and file_size_mb(path) > 0.1  # replaced
    with pytest.raises(ValueError, match="model.mlpackage is a Core ML package: Core ML runs on Apple devices only"):
        ExportedModel(path)


def test_the_core_ml_rewrites_compute_what_the_program_computes():
    class Spellings(torch.nn.Module):  # what coremltools 9.0 does not convert, spelled as the heads spell it
        def forward(self, x):
            keep = (x > 0.2) & ~(x > 0.7) | (x < -0.5)
            peak = x.argmax(-1, keepdim=True)
            row, column = torch.div(peak, 4, rounding_mode="floor"), peak % 4
            spread = torch.zeros_like(x).scatter(-1, x.argsort(-1)[..., :2], 1.0) + keep[:, : x.shape[1]]
            return spread.gather(-1, row * 4 + column) * (row * 10 + column)

    program = torch.export.export(Spellings(), (torch.zeros(2, 6),))
    rewritten = _coreml_compatible(program)
    targets = {str(node.target) for node in rewritten.graph.nodes if node.op == "call_function"}
    assert not targets & {"aten.alias.default", "aten.__and__.Tensor", "aten.bitwise_and.Tensor",
                          "aten.bitwise_or.Tensor", "aten.bitwise_not.default"}, targets
    assert "aten.logical_and.default" in targets
    full = [node for node in rewritten.graph.nodes if node.target is torch.ops.aten.full_like.default]
    assert all(isinstance(node.args[1], float) for node in full)
    divisions = [node for node in rewritten.graph.nodes if node.target in (torch.ops.aten.div.Tensor_mode,
                                                                             torch.ops.aten.remainder.Scalar)]
    assert len(divisions) == 2 and all([user.target for user in node.users] == [torch.ops.aten._to_copy.default]
                                       for node in divisions)
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rewritten.module()(x), Spellings()(x))


def test_int8_quantizes_the_network_and_not_the_post_processing():
    network = detector("mobilenet_v3_large")
    program = quantize_program(network, [96, 96], images(*[(96, 96)] * 2, seed=1))
    weights = {n.args[0].name for n in program.graph.nodes if "dequantize_per_channel" in str(n.target)}
    convolutions = [n for n in program.graph.nodes if "conv2d" in str(n.target)]
    assert len(weights) == len(convolutions) > 20  # every convolution's weights, per channel
    # nothing the detector computes itself after the head (box decoding, NMS) is quantized: every quantized value
    # comes from a module's operation (the convolutions, or the input's scaling that feeds the first one), or is
    # the head's output rearranged
    rearranging = ("aten.reshape", "aten.view", "aten.permute", "aten.flatten", "aten.cat", "aten.slice", "aten.select")
    for node in program.graph.nodes:
        if "quantize_per_tensor" in str(node.target) and "dequantize" not in str(node.target):
            source = node.args[0]
            modules = [path for path, _ in source.meta.get("nn_module_stack", {}).values() if path]
            assert modules or str(source.target).startswith(rearranging), f"{source.name}: the detector's arithmetic"


@pytest.mark.slow
def test_an_int8_file_follows_the_float_network(tmp_path):
    network = detector("mobilenet_v3_large")
    network.detections_per_img = 40
    exported = write(network, "detect", tmp_path / "model_int8.pte", int8_images=images(*[(96, 96)] * 8, seed=1))
    assert (tmp_path / "model_int8.pte").stat().st_size < 0.4 * sum(4 * p.numel() for p in network.parameters())
    fitted = images((96, 96), (96, 96), seed=3)
    with torch.no_grad():
        expected = run_images(network, fitted)
    got = run_images(exported, fitted)
    stats = agreement("detect", budget(expected, got), got, box_tolerance=2.0)
    assert stats["candidate_detections"] > 20 and stats["unmatched"] < 0.5 * stats["detections"], stats


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 4000), size=st.integers(1, 1000), extent=st.integers(1, 1000),
       height=st.integers(1, 4000), width=st.integers(1, 4000), side=st.integers(16, 1024))
def test_an_exported_program_resizes_with_eagers_numbers(length, size, extent, height, width, side):
    """Under torch.export the resize's taps and the segmenter's extent are constants of eager's float32
    arithmetic (see heads._input), so a fixed-size file samples the pixels eager samples."""
    extent = min(extent, size)
    eager = _taps(torch.tensor(float(length)), size, extent, torch.device("cpu"))
    constant = _constant_taps(length, size, extent, torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(eager, constant))
    images = torch.empty(1, 3, height, width, dtype=torch.uint8)
    expected = longer_side_extent(images, side).tolist()
    with patch.object(torch.compiler, "is_compiling", return_value=True):
        assert longer_side_extent(images, side) == expected


def test_the_options_that_cannot_work_are_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="--input_size fixes a mobile file's input"):
        export_task(None, None, None, None, "onnx", False, None, input_size=[96, 96])
    with pytest.raises(ValueError, match="--input_size takes a height and a width"):
        export_task(None, None, None, None, "tflite", False, None, input_size=[96])
    with pytest.raises(ValueError, match="--format must be one of onnx, openvino, executorch, tflite, coreml"):
        export_task(None, None, None, None, "caffe2", False, None)
    with patch("tasks.deploy.mobile.LITERT_LAYER", tmp_path / "nowhere"), \
            pytest.raises(RuntimeError, match="nowhere .*constraints-litert.txt"):
        write_tflite(tiny_detector(), tmp_path / "model.tflite", {}, [96, 96])
    assert pair_input_size(["export", "--input_size", "240", "320", "--int8", "true"]) == \
        ["export", "--input_size", "[240,320]", "--int8", "true"]


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".pte", ".tflite"])
def test_a_file_of_another_input_size_resizes_inside_as_eager_does(suffix, tmp_path):
    """``--input_size`` other than the network's: the file takes 128x160 and resizes to the network's 96x96 itself."""
    network = tiny_detector()
    exported = write(network, "detect", tmp_path / f"model{suffix}", size=[128, 160])
    assert exported.metadata["fixed_input_size"] == [128, 160] and exported.metadata["input_size"] == [96, 96]
    stats = against_eager("detect", network, exported, [128, 160], box_tolerance=0.16)
    assert stats["detections"] > 20 and faithful("detect", stats), summarize("detect", stats)
