"""Files for phones: ExecuTorch programs (``.pte``), LiteRT flatbuffers (``.tflite``) and Core ML packages
(``.mlpackage``), batch 1 at a fixed input size, post-processing inside.

The network is traced by ``torch.export`` at one input size (``uint8 (1, 3, H, W)``); detection's NMS is
:func:`heads._nms.fixed_shape_nms` there (``SSDLite.fixed_shapes``), so every shape in the program is
fixed and the whole pipeline — resize, normalization, the network, box decoding, NMS, segmentation's
argmax and pose's peak decoding — runs in the file, as it does in the ONNX one. ExecuTorch lowers it
with the XNNPACK partitioner (ARM and x86 CPUs: Android, iOS, Linux); INT8 is its pt2e flow with
XNNPACK's quantizer, calibrated on training images: convolutions and linear layers of the network
(weights per channel, activations per tensor), never the box arithmetic or the input's scaling.

LiteRT files take ``uint8 (1, H, W, 3)`` (:class:`TFLiteInterface`) and are converted by litert-torch in a
subprocess (``tasks/deploy/litert_convert.py``; see there why); INT8 is ai-edge-quantizer's, calibrated the
same way. The detector's four outputs are those of TFLite's detection post-processing, so that Android's
object-detection APIs read them.

Core ML packages are converted by coremltools from the same ``torch.export`` program: an RGB image input
(the pixel buffer an iOS app's camera gives), float32 compute (box areas overflow float16), INT8 as
coremltools' per-channel weight quantization. Core ML runs on Apple devices only: here the package's
spec — input, outputs, metadata — is checked (:func:`check_coreml`), not its outputs.

The ``kestrel`` metadata travels in a ``.pte`` program as a constant method returning its JSON as bytes,
in a ``.tflite`` flatbuffer as the metadata entry named ``kestrel``, in a Core ML package as the
user-defined metadata entry ``kestrel``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import operator
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from heads._input import resize

from ..qat import float_transposed_convolutions, is_converted, quantized_parts, quantizer

PTE_SUFFIX = ".pte"
TFLITE_SUFFIX = ".tflite"
COREML_SUFFIX = ".mlpackage"
#: litert-torch and its dependencies, installed by ``make install`` beside Kestrel's environment
LITERT_LAYER = Path(sys.prefix) / "litert"
#: the detector's outputs in a .tflite file, in order (TFLite's detection post-processing)
TFLITE_DETECTION_OUTPUTS = ("boxes", "classes", "scores", "count")
#: the name of every exported file's metadata entry (ONNX property, OpenVINO rt_info, TFLite metadata)
METADATA_KEY = "kestrel"
METADATA_METHOD = "kestrel_metadata"


def fit_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A uint8 ``(3, h, w)`` (or ``(N, 3, h, w)``) image stretched to ``size`` as an app would before it
    calls a fixed-size file: the networks' own bilinear resize, rounded back to uint8."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batch = image if image.dim() == 4 else image[None]
    fitted = resize(batch, list(size)).round().clamp(0, 255).to(torch.uint8)
    return fitted if image.dim() == 4 else fitted[0]


@contextlib.contextmanager
def fixed_shapes(network: nn.Module) -> Iterator[nn.Module]:
    """``network`` with no data-dependent shape inside (detection: :meth:`heads.ssdlite.SSDLite.fixed_shapes`, over
    ``detections_per_img`` candidates per image). On the demo detector 100 candidates rather than 300 cost 0.0013 mAP
    (0.0093 mAR@100) and saved no conversion time: the network, not the unrolled NMS, takes it."""
    context = getattr(network, "fixed_shapes", None)
    with context() if context is not None else contextlib.nullcontext():
        yield network


def _standard_layout(network: nn.Module) -> nn.Module:
    """``network``, or a copy with its weights in the standard (not channels-last) layout."""
    if any(p.dim() == 4 and not p.is_contiguous() for p in network.parameters()):
        return copy.deepcopy(network).to(memory_format=torch.contiguous_format)
    return network


def export_program(network: nn.Module, input_size: Sequence[int]) -> torch.export.ExportedProgram:
    """``torch.export`` of ``network`` (eval mode, CPU) for one uint8 image of ``input_size``; its weights
    in the standard layout, which XNNPACK's layout pass expects (a copy when they are channels-last)."""
    example = torch.zeros((1, 3, *input_size), dtype=torch.uint8)
    network = _standard_layout(network)
    with torch.no_grad(), fixed_shapes(network):
        return torch.export.export(network, (example,), strict=False)


def _xnnpack_quantizer(network: nn.Module):
    """XNNPACK's quantizer (:func:`tasks.qat.quantizer`) for the float operations inside the network's quantized
    parts (:func:`tasks.qat.quantized_parts`): not the input's scaling, box decoding or NMS."""
    parts = set(quantized_parts(network))

    def inside(node: torch.fx.Node) -> bool:
        if node.op != "call_function":  # weights and biases: quantized with the operation that reads them
            return True
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            return False
        return any(path.split(".")[0] in parts for path, _ in node.meta.get("nn_module_stack", {}).values())

    # a module-name setting would skip every convolution: its weight, a get_attr node, has no module stack
    return quantizer(qat=False).set_filter_function(inside)


def quantize_program(network: nn.Module, input_size: Sequence[int],
                     calibration: Iterable[torch.Tensor]) -> torch.export.ExportedProgram:
    """The network's program with INT8 convolutions and linear layers (torchao's pt2e flow with
    ExecuTorch's ``XNNPACKQuantizer``), activation ranges observed on ``calibration`` images (uint8
    ``(3, h, w)`` of any size, fitted to ``input_size`` as the runtime fits them)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(export_program(network, input_size).module(), _xnnpack_quantizer(network))
    with torch.no_grad():
        for image in calibration:
            prepared(fit_image(image, input_size)[None])
    converted = convert_pt2e(prepared)
    example = torch.zeros((1, 3, *input_size), dtype=torch.uint8)
    with torch.no_grad():
        return torch.export.export(converted, (example,), strict=False)


def write_pte(program: torch.export.ExportedProgram, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Lower ``program`` to XNNPACK and write it to ``path`` with ``metadata`` as a constant method."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    text = torch.frombuffer(bytearray(json.dumps(metadata).encode()), dtype=torch.uint8)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                          constant_methods={METADATA_METHOD: text})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lowered.to_executorch().buffer)
    return path


def phone_metadata(network: nn.Module, metadata: dict[str, Any], size: Sequence[int]) -> dict[str, Any]:
    """``metadata`` (its ``format`` one of ``executorch``, ``tflite``, ``coreml``) with what a file of one input
    ``size`` adds: ``fixed_input_size``, the network's ``outputs``, and for LiteRT its layout and the file's own
    outputs (a detector's four, :data:`TFLITE_DETECTION_OUTPUTS`)."""
    with torch.no_grad():
        outputs = list(network(torch.zeros(1, 3, *size, dtype=torch.uint8)))
    described = {**metadata, "fixed_input_size": [int(side) for side in size], "outputs": outputs}
    if metadata["format"] == "tflite":
        described.update(input_layout="NHWC",
                         file_outputs=list(TFLITE_DETECTION_OUTPUTS) if "boxes" in outputs else outputs)
    return described


def write_phone_file(network: nn.Module, path: str | Path, metadata: dict[str, Any], size: Sequence[int],
                     calibration: Iterable[torch.Tensor] | None = None) -> Path:
    """``network`` as a ``.tflite`` or ``.pte`` file (by ``path``'s suffix) of input ``size``, INT8 when
    ``calibration`` images are given."""
    if Path(path).suffix.lower() == TFLITE_SUFFIX:
        return write_tflite(network, path, metadata, size, calibration)
    if is_converted(network):
        network = float_transposed_convolutions(network)
    program = export_program(network, size) if calibration is None else quantize_program(network, size, calibration)
    return write_pte(program, path, metadata)


def read_pte_metadata(program) -> str | None:
    """The ``kestrel`` metadata JSON of a loaded ExecuTorch program, or None."""
    if METADATA_METHOD not in program.method_names:
        return None
    (text,) = program.load_method(METADATA_METHOD).execute([])
    return bytes(text.numpy()).decode()


class TFLiteInterface(nn.Module):
    """A Kestrel network with LiteRT's interface: one uint8 image ``(1, H, W, 3)`` in; the detector's boxes
    as normalized ``ymin, xmin, ymax, xmax``, 0-based classes, scores and the count, all float32 (TFLite's
    detection post-processing); segmentation's ``labels`` and pose's ``keypoints`` as the network gives them."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor):
        height, width = image.shape[1:3]
        out = self.network(image.permute(0, 3, 1, 2))
        if "boxes" not in out:
            return tuple(out.values())
        x0, y0, x1, y1 = out["boxes"].unbind(-1)
        boxes = torch.stack([y0 / height, x0 / width, y1 / height, x1 / width], -1)
        count = out["num_detections"]
        classes = torch.where(torch.arange(boxes.shape[1]) < count[:, None], out["labels"] - 1, 0)
        return boxes, classes.float(), out["scores"], count.float()


def write_tflite(network: nn.Module, path: str | Path, metadata: dict[str, Any], input_size: Sequence[int],
                 calibration: Iterable[torch.Tensor] | None = None) -> Path:
    """``network`` as a ``.tflite`` file at ``path`` (INT8 when ``calibration`` images are given), with
    ``metadata``: exported here, converted by litert-torch in the LiteRT layer's subprocess."""
    if not (LITERT_LAYER / "litert_torch").is_dir():
        raise RuntimeError(f"--format tflite converts with litert-torch, installed by `make install` into "
                           f"{LITERT_LAYER} (pip install --no-deps --target {LITERT_LAYER} -r constraints-litert.txt)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((1, *input_size, 3), dtype=torch.uint8)
    network = _standard_layout(network)
    with tempfile.TemporaryDirectory() as scratch, torch.no_grad(), fixed_shapes(network):
        program = Path(scratch) / "program.pt2"
        torch.export.save(torch.export.export(TFLiteInterface(network).eval(), (example,), strict=False), program)
        arguments = [str(program), str(path)]
        if is_converted(network):
            arguments.append("--quantized")
        elif calibration is not None:
            images = np.stack([fit_image(image, input_size).permute(1, 2, 0).numpy() for image in calibration])
            np.save(Path(scratch) / "calibration.npy", images)
            arguments.append(str(Path(scratch) / "calibration.npy"))
        path_first = os.pathsep.join([str(LITERT_LAYER), os.environ.get("PYTHONPATH", "")])
        environment = {**os.environ, "PYTHONPATH": path_first}
        done = subprocess.run([sys.executable, str(Path(__file__).with_name("litert_convert.py")), *arguments],
                              env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        last = [line for line in done.stderr.splitlines() if line.strip()][-1:] or ["(no message)"]
        raise RuntimeError(f"litert-torch could not convert the network to {path}: {last[0]}")
    write_tflite_metadata(path, metadata)
    return path


def write_tflite_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    """Put ``metadata`` into the ``.tflite`` file as the metadata entry named ``kestrel`` (replacing one)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(path).read_bytes()))
    model.metadata = [entry for entry in model.metadata or [] if _name(entry.name) != METADATA_KEY]
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_KEY, len(model.buffers) - 1
    model.metadata.append(entry)
    Path(path).write_bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def read_tflite_metadata(path: str | Path) -> str | None:
    """The ``kestrel`` metadata JSON of a ``.tflite`` file, or None."""
    from ai_edge_litert import schema_py_generated as schema

    data = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if _name(entry.Name()) == METADATA_KEY:
            buffer = model.Buffers(entry.Buffer())
            if buffer.Offset():  # stored after the flatbuffer (large models)
                return data[buffer.Offset(): buffer.Offset() + buffer.Size()].decode()
            return buffer.DataAsNumpy().tobytes().decode()
    return None


def _name(name: str | bytes | None) -> str | None:
    return name.decode() if isinstance(name, bytes) else name


class CoreMLInterface(nn.Module):
    """A Kestrel network with Core ML's interface: an RGB image ``(1, 3, H, W)``, which Core ML hands over as
    float32 0-255 (Core ML has no uint8 tensors); the network's outputs in order, integers as int32."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.network(image.round().clamp(0, 255).to(torch.uint8))
        return tuple(value if value.is_floating_point() else value.int() for value in out.values())


# ATen operations coremltools 9.0 does not convert, each with the one it converts that computes the same
_BOOLEAN_TWINS = {"aten.__and__.Tensor": torch.ops.aten.logical_and.default,
                  "aten.bitwise_and.Tensor": torch.ops.aten.logical_and.default,
                  "aten.__or__.Tensor": torch.ops.aten.logical_or.default,
                  "aten.bitwise_or.Tensor": torch.ops.aten.logical_or.default,
                  "aten.bitwise_not.default": torch.ops.aten.logical_not.default}

_DIVIDED_IN_FLOAT = (torch.ops.aten.div.Tensor_mode, torch.ops.aten.remainder.Scalar, torch.ops.aten.remainder.Tensor)


def _coreml_compatible(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """``program`` in core ATen with the few spellings coremltools 9.0 lacks rewritten: ``alias`` (a full slice)
    dropped, bitwise operations on booleans as logical ones, a ``full_like`` of a float tensor filled with the
    integer 0 given a float fill (the converter would type it int32), and integer floor divisions and remainders
    cast back to integers (the converter divides in float: exact for the index arithmetic here, far below 2**24)."""
    program = program.run_decompositions()
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        name = str(node.target)
        if node.target is torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
        elif name in _BOOLEAN_TWINS and node.meta["val"].dtype == torch.bool:
            node.target = _BOOLEAN_TWINS[name]
        elif node.target is torch.ops.aten.full_like.default and node.meta["val"].is_floating_point():
            node.args = (node.args[0], float(node.args[1]), *node.args[2:])
        elif node.target in _DIVIDED_IN_FLOAT and not node.meta["val"].is_floating_point():
            with graph.inserting_after(node):
                cast = graph.call_function(torch.ops.aten._to_copy.default, (node,), {"dtype": node.meta["val"].dtype})
            cast.meta["val"] = node.meta["val"]
            node.replace_all_uses_with(cast, delete_user_cb=functools.partial(operator.is_not, cast))
    program.graph_module.recompile()
    return program


@contextlib.contextmanager
def _coreml_notes_silenced() -> Iterator[None]:
    """coremltools' log notes off: on Linux it has no Core ML framework to load, it was not tested with this
    scikit-learn or torch, and it notes every int64 constant it stores as int32 (the converted values are
    checked in :func:`check_coreml`'s spec and by Kestrel's tests instead)."""
    loggers = [logging.getLogger(name) for name in ("coremltools", "root")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _coremltools():
    try:
        with _coreml_notes_silenced():
            import coremltools
    except ImportError:
        raise ImportError("coremltools is not installed: pip install coremltools (constraints.txt pins it)") from None
    return coremltools


def write_coreml(network: nn.Module, path: str | Path, metadata: dict[str, Any], input_size: Sequence[int],
                 int8: bool = False) -> Path:
    """``network`` as a Core ML package (ML program, iOS 17 / macOS 14 and later) at ``path`` with ``metadata``;
    with ``int8``, its weights quantized to int8 per output channel."""
    ct = _coremltools()
    example = torch.zeros((1, 3, *input_size), dtype=torch.float32)
    network = _standard_layout(network)
    with torch.no_grad(), fixed_shapes(network):
        program = torch.export.export(CoreMLInterface(network).eval(), (example,), strict=False)
    with _coreml_notes_silenced():
        model = ct.convert(_coreml_compatible(program),
                           inputs=[ct.ImageType(name="image", shape=example.shape, color_layout=ct.colorlayout.RGB)],
                           outputs=[ct.TensorType(name=name) for name in metadata["outputs"]],
                           minimum_deployment_target=ct.target.iOS17, compute_precision=ct.precision.FLOAT32,
                           convert_to="mlprogram")
        if int8:
            weights = ct.optimize.coreml.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                 granularity="per_channel")
            model = ct.optimize.coreml.linear_quantize_weights(model, ct.optimize.coreml.OptimizationConfig(weights))
    model.user_defined_metadata[METADATA_KEY] = json.dumps(metadata)
    model.short_description = (f"Kestrel {metadata['task']}: {metadata.get('network')} on {metadata.get('backbone')}, "
                               f"{metadata.get('precision')}")
    path = Path(path)
    if path.exists():  # a package is a folder: the old one's files would stay beside the new ones
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(path))
    return path


def read_coreml_metadata(path: str | Path) -> str | None:
    """The ``kestrel`` metadata JSON of a Core ML package, or None."""
    spec = _coremltools().utils.load_spec(str(path))
    return spec.description.metadata.userDefined.get(METADATA_KEY)


def check_coreml(path: str | Path) -> str:
    """What Kestrel can check of a Core ML package on a machine without Core ML: its spec has one RGB image input
    of the metadata's ``fixed_input_size``, the metadata's outputs in order, and the ``kestrel`` metadata.
    Returns a line that says so; raises ``ValueError`` naming what differs."""
    spec = _coremltools().utils.load_spec(str(path))
    text = spec.description.metadata.userDefined.get(METADATA_KEY)
    if not text:
        raise ValueError(f"{path}: no '{METADATA_KEY}' metadata in the package")
    metadata = json.loads(text)
    (image,) = spec.description.input
    height, width = metadata["fixed_input_size"]
    kind = image.type.WhichOneof("Type")
    found = (kind, image.type.imageType.height, image.type.imageType.width) if kind == "imageType" else (kind,)
    if found != ("imageType", height, width):
        raise ValueError(f"{path}: input {image.name!r} is {found}, not an RGB image {height}x{width}")
    outputs = [output.name for output in spec.description.output]
    if outputs != list(metadata["outputs"]):
        raise ValueError(f"{path}: outputs {outputs}, expected {metadata['outputs']}")
    return (f"Core ML spec checked: input RGB image {height}x{width}, outputs {', '.join(outputs)}, "
            f"'{METADATA_KEY}' metadata (Core ML runs on Apple devices only: outputs not compared here)")
