"""INT8 post-training quantization of an exported network: ONNX Runtime's static QDQ quantizer.

Weights are quantized per output channel (int8, symmetric), activations per tensor (uint8, the fast
path of x86's integer instructions) from the ranges seen on calibration images (training images, as
the network takes them: uint8, any size). Only the convolutions and matrix products are quantized;
everything around them (input scaling and resizing, box decoding, NMS, argmax, heatmap decoding)
stays in float, so a quantized model's outputs keep the float model's geometry.

The defaults were measured on the demo detector (docs/benchmarks/int8-backbones.md): ranges from the 99.999th
percentile rather than the extremes (``calibration``), and the first convolution, which sees raw
pixels, and the last ones, which produce the predictions (scores, box offsets, heatmaps, class
logits), kept in float (``keep_float``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

KeepFloat = Literal["first_conv", "last_convs"]
# ONNX Runtime's entropy calibration is left out: quantize_static builds it with 128 histogram bins for 128
# quantized bins, which leaves one candidate threshold, the full range (on the demo detector every scale
# equalled minmax's), and offers no option to change that.
Calibration = Literal["percentile", "minmax"]
DEFAULT_KEEP_FLOAT: tuple[KeepFloat, ...] = ("first_conv", "last_convs")
QUANTIZED_OPS = ["Conv", "ConvTranspose", "MatMul", "Gemm"]
_CONV_OPS = {"Conv", "ConvTranspose"}


def conv_nodes(model: onnx.ModelProto, which: KeepFloat) -> list[str]:
    """Names of the first convolutions (no convolution before them) or the last ones (none after them)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_conv(start: onnx.NodeProto, forward: bool) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            for name in (node.output if forward else node.input):
                nexts = consumers.get(name, []) if forward else [producer[name]] if name in producer else []
                for other in nexts:
                    if other.op_type in _CONV_OPS:
                        return True
                    if id(other) not in seen:
                        seen.add(id(other))
                        stack.append(other)
        return False

    forward = which == "last_convs"
    return [n.name for n in model.graph.node if n.op_type in _CONV_OPS and not reaches_conv(n, forward)]


def image_reader(images: Iterable[np.ndarray]):
    """ONNX Runtime's ``CalibrationDataReader`` over uint8 images ``(3, H, W)`` or ``(1, 3, H, W)``, each given as the
    exported network's ``images`` input: what its calibration and its quantization debugger read."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.images, None)
            return None if image is None else {"images": image[None] if image.ndim == 3 else image}

    return Reader()


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, images: Iterable[np.ndarray] | None,
                  keep_float: Sequence[KeepFloat] = DEFAULT_KEEP_FLOAT, calibration: Calibration = "percentile",
                  float_nodes: Sequence[str] = (), calibration_cache: str | Path | None = None) -> list[str]:
    """Write ``int8_path``, the static INT8 (QDQ) version of the ONNX model ``fp32_path``.

    Args:
        fp32_path: The exported float model.
        int8_path: Where to write.
        images: Calibration images, uint8 ``(3, H, W)`` or ``(1, 3, H, W)`` arrays (None: the ranges are read from
            ``calibration_cache``).
        keep_float: Convolutions left in float: ``first_conv``, ``last_convs``.
        calibration: How activation ranges are set: ``percentile`` (99.999th) or ``minmax``.
        float_nodes: Other nodes left in float, by name.
        calibration_cache: A file of activation ranges (ONNX Runtime's calibration cache): read if it exists,
            else written, so that models quantized from one float model with other nodes in float share them.

    Returns:
        The names of the nodes left in float.
    """
    import onnx  # the command line imports this module for its choices; ONNX only when quantizing
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}
    if calibration not in methods:
        raise ValueError(f"calibration must be one of {sorted(methods)}, got {calibration!r}")

    model = onnx.load(str(fp32_path))
    excluded = sorted({name for which in keep_float for name in conv_nodes(model, which)} | set(float_nodes))
    with _without_preprocessing_advice():
        quantize_static(
            str(fp32_path), str(int8_path), None if images is None else image_reader(images),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=excluded,
            calibrate_method=methods[calibration],
            calibration_cache_path=calibration_cache,
        )
    log.info("INT8: %d convolution(s) kept in float: %s", len(excluded), excluded)
    return excluded


class _PreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """Without the warnings ``quantize_static`` logs twice per call unless the model went through its
    ``quant_pre_process``: its shape inference and graph optimizations are what ``torch.onnx`` already did
    (shapes, batch norms folded, constants folded), and its renaming of nodes would lose the names that
    ``keep_float`` and the float fallback keep in float."""
    advice = _PreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


#: ONNX's integer types of the quantized tensors pt2e writes
_ONNX_TYPES = {torch.int8: 3, torch.uint8: 2}  # onnx.TensorProto.INT8, UINT8
_QDQ_OPS = ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel", "dequantize_per_channel")


#: c10's ScalarType numbers of the integer types a quantize operation names (Byte, Char)
_SCALAR_TYPES = {0: torch.uint8, 1: torch.int8}


def _onnx_type(dtype_value) -> tuple[torch.dtype, int]:
    from torch.onnx import symbolic_helper

    dtype = _SCALAR_TYPES.get(symbolic_helper._get_const(dtype_value, "i", "dtype"))
    if dtype not in _ONNX_TYPES:
        raise ValueError(f"ONNX export of a quantized tensor of {dtype}: only int8 and uint8 are written")
    return dtype, _ONNX_TYPES[dtype]


def _per_tensor(g, quantize: bool, x, scale, zero_point, dtype_value):
    from torch.onnx import symbolic_helper

    dtype, _ = _onnx_type(dtype_value)
    scale = g.op("Constant", value_t=torch.tensor(symbolic_helper._maybe_get_const(scale, "f"), dtype=torch.float32))
    zero = g.op("Constant", value_t=torch.tensor(symbolic_helper._maybe_get_const(zero_point, "i"), dtype=dtype))
    return g.op("QuantizeLinear" if quantize else "DequantizeLinear", x, scale, zero)


def _per_channel(g, quantize: bool, x, scales, zero_points, axis, dtype_value):
    from torch.onnx import symbolic_helper

    _, onnx_type = _onnx_type(dtype_value)
    if symbolic_helper._is_none(zero_points):
        zero_points = g.op("Mul", scales, g.op("Constant", value_t=torch.tensor(0.0)))
    zero_points = g.op("Cast", zero_points, to_i=onnx_type)
    return g.op("QuantizeLinear" if quantize else "DequantizeLinear", x, scales, zero_points,
                axis_i=symbolic_helper._get_const(axis, "i", "axis"))


def _quantize_per_tensor(g, x, scale, zero_point, quant_min, quant_max, dtype):
    return _per_tensor(g, True, x, scale, zero_point, dtype)


def _dequantize_per_tensor(g, x, scale, zero_point, quant_min, quant_max, dtype, *_):
    return _per_tensor(g, False, x, scale, zero_point, dtype)


def _quantize_per_channel(g, x, scales, zero_points, axis, quant_min, quant_max, dtype):
    return _per_channel(g, True, x, scales, zero_points, axis, dtype)


def _dequantize_per_channel(g, x, scales, zero_points, axis, quant_min, quant_max, dtype, *_):
    return _per_channel(g, False, x, scales, zero_points, axis, dtype)


@contextlib.contextmanager
def qdq_symbolics(opset: int) -> Iterator[None]:
    """Within this context, the ONNX export (TorchScript) writes the quantize and dequantize operations of a pt2e
    INT8 network (``quantized_decomposed``, e.g. a QAT checkpoint's, :func:`tasks.qat.convert`) as ONNX's
    ``QuantizeLinear`` / ``DequantizeLinear`` with their scales and zero points: the QDQ format ONNX Runtime's
    quantizer writes, which ONNX Runtime and OpenVINO run as INT8."""
    functions = dict(zip(_QDQ_OPS, (_quantize_per_tensor, _dequantize_per_tensor, _quantize_per_channel,
                                    _dequantize_per_channel)))
    for name, function in functions.items():
        torch.onnx.register_custom_op_symbolic(f"quantized_decomposed::{name}", function, opset)
    try:
        yield
    finally:
        for name in functions:
            torch.onnx.unregister_custom_op_symbolic(f"quantized_decomposed::{name}", opset)


def describe_int8(int8: dict) -> str:
    """One line of a report on what an INT8 file's ``int8`` metadata says stays float, and why."""
    kept = list(int8.get("kept_in_float", []))
    fallback = int8.get("fallback")
    if fallback is None:
        how = "scales learned in quantization-aware training" if int8.get("quantization") == "qat" else "calibrated"
        return f"{how}; kept in float: {', '.join(kept) or 'nothing'}"
    searched = (f"every layer INT8 {fallback['every_layer_int8']:.4f}, float {fallback['float']:.4f}, "
                "on the validation split in ONNX Runtime")
    if not kept:
        return f"every layer INT8: within --int8_max_drop {fallback['max_drop']} ({searched})"
    return (f"{len(kept)} of {fallback['quantized_layers']} layers kept in float, the most sensitive, the fewest that "
            f"keep the drop within --int8_max_drop {fallback['max_drop']}: {fallback['metric']} {fallback['int8']:.4f} "
            f"({searched}): "
            f"{', '.join(kept)}")
