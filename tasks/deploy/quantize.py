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

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

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


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, images: Iterable[np.ndarray],
                  keep_float: Sequence[KeepFloat] = DEFAULT_KEEP_FLOAT, calibration: Calibration = "percentile"
                  ) -> list[str]:
    """Write ``int8_path``, the static INT8 (QDQ) version of the ONNX model ``fp32_path``.

    Args:
        fp32_path: The exported float model.
        int8_path: Where to write.
        images: Calibration images, uint8 ``(3, H, W)`` or ``(1, 3, H, W)`` arrays.
        keep_float: Convolutions left in float: ``first_conv``, ``last_convs``.
        calibration: How activation ranges are set: ``percentile`` (99.999th) or ``minmax``.

    Returns:
        The names of the nodes left in float.
    """
    import onnx  # the command line imports this module for its choices; ONNX only when quantizing
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax}
    if calibration not in methods:
        raise ValueError(f"calibration must be one of {sorted(methods)}, got {calibration!r}")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            image = next(self.images, None)
            return None if image is None else {"images": image[None] if image.ndim == 3 else image}

    model = onnx.load(str(fp32_path))
    excluded = sorted({name for which in keep_float for name in conv_nodes(model, which)})
    quantize_static(
        str(fp32_path), str(int8_path), Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=excluded,
        calibrate_method=methods[calibration],
    )
    log.info("INT8: %d convolution(s) kept in float: %s", len(excluded), excluded)
    return excluded
