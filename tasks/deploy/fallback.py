"""Automatic float fallback for post-training INT8: ``export --int8 true --int8_max_drop D``.

Which layers to leave in float is usually the user's guess. Here it is measured:

1. The float ONNX file and the file with every convolution and matrix product INT8 are scored on the validation
   split in ONNX Runtime, with the task's evaluator (the metric ``best.ckpt`` is chosen by). If INT8 costs at most
   ``D``, nothing stays in float.
2. Otherwise each quantized layer's sensitivity is measured on a few calibration images with ONNX Runtime's
   quantization debugger (``onnxruntime.quantization.qdq_loss_debug``): the noise its quantized weights and
   quantized inputs add, relative to their signal (the sum of both noise-to-signal power ratios).
3. The layers are kept in float from the most sensitive down: a binary search over how many, each candidate
   quantized from the same calibration ranges (ONNX Runtime's calibration cache) and scored, finds the fewest that
   keep the drop within ``D`` (it takes the drop to fall as more layers stay float).

The file's ``int8`` metadata names the layers kept and records every score the search made.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .quantize import QUANTIZED_OPS, Calibration, image_reader, quantize_int8

#: images the sensitivity ranking runs (its own pass over both models' activations)
SENSITIVITY_IMAGES = 8


def layer_sensitivity(fp32_path: str | Path, int8_path: str | Path, images: Iterable[np.ndarray]) -> dict[str, float]:
    """Per quantized node of ``int8_path`` (a QDQ model of ``fp32_path``), the quantization noise of its weights and
    inputs relative to their signal (noise power over signal power, summed; 0 for an exact input), as ONNX Runtime's
    quantization debugger measures it on ``images`` (uint8 ``(3, H, W)``). The larger, the more sensitive."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    with tempfile.TemporaryDirectory() as scratch:
        augmented = Path(scratch) / "augmented.onnx"
        # the inputs of each QuantizeLinear and outputs of each DequantizeLinear, flattened (any image size)
        modify_model_output_intermediate_tensors(str(int8_path), str(augmented),
                                                 ["QuantizeLinear", "DequantizeLinear"])
        activations = create_activation_matching(collect_activations(str(augmented), image_reader(images)))
    # tensor name -> SQNR in dB of the tensor after its quantize-dequantize pair against before
    inputs = {name: compute_signal_to_quantization_noice_ratio(match["pre_qdq"], match["post_qdq"])
              for name, match in activations.items()}
    weights = compute_weight_error(create_weight_matching(str(fp32_path), str(int8_path)))  # weight name -> dB
    noise = {name: 10 ** (-db / 10) for name, db in inputs.items()}
    noise.update({name: 10 ** (-db / 10) for name, db in weights.items()})
    model = onnx.load(str(fp32_path), load_external_data=False)
    return {node.name: sum(noise.get(name, 0.0) for name in node.input)
            for node in model.graph.node if node.op_type in QUANTIZED_OPS and any(n in noise for n in node.input)}


def fewest_in_float(count: int, drop: Callable[[int], float], max_drop: float) -> int:
    """The smallest ``k`` in ``[0, count]`` with ``drop(k) <= max_drop``, where ``drop(k)`` is the metric's drop with
    the ``k`` most sensitive layers kept in float (``drop(count)``, nothing quantized, is taken to be 0 and not
    asked). A binary search: ``drop`` is asked about ``log2(count) + 1`` times and taken to fall as ``k`` grows."""
    if drop(0) <= max_drop:
        return 0
    low, high = 0, count  # drop(low) is over the bound, drop(high) within it
    while high - low > 1:
        middle = (low + high) // 2
        if drop(middle) <= max_drop:
            high = middle
        else:
            low = middle
    return high


def quantize_within(fp32_path: str | Path, int8_path: str | Path, images: Sequence[np.ndarray],
                    score: Callable[[Path], float], max_drop: float, calibration: Calibration = "percentile",
                    metric: str = "metric", log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write ``int8_path``, the INT8 model of ``fp32_path`` with the fewest layers in float that keep ``score`` within
    ``max_drop`` of the float model's (see the module's description).

    Args:
        fp32_path: The exported float ONNX model.
        int8_path: Where to write.
        images: Calibration images, uint8 ``(3, H, W)`` arrays (the first :data:`SENSITIVITY_IMAGES` also rank the
            layers).
        score: The task's metric of an ONNX file (higher is better), e.g. its validation mAP.
        max_drop: How much below the float model's score the INT8 file may be.
        calibration: How activation ranges are set (:func:`tasks.deploy.quantize.quantize_int8`).
        metric: The metric's name, for the record and the log.
        log: Where progress lines go.

    Returns:
        What the file's ``int8`` metadata records: ``kept_in_float`` (node names, most sensitive first) and
        ``fallback`` (the bound, the scores, the layers' sensitivity).
    """
    if not max_drop >= 0:
        raise ValueError(f"--int8_max_drop is how much the metric may drop, at least 0; got {max_drop}")
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "calibration.json"  # the ranges, computed once for every candidate

        def quantized(kept: Sequence[str], path: Path) -> Path:
            quantize_int8(fp32_path, path, images if not cache.is_file() else None, keep_float=(),
                          calibration=calibration, float_nodes=kept, calibration_cache=cache)
            return path

        reference = score(Path(fp32_path))
        all_int8 = quantized([], Path(scratch) / "all_int8.onnx")
        scores = {0: score(all_int8)}
        log(f"INT8 fallback: {metric} of the float file {reference:.4f}, every layer INT8 {scores[0]:.4f} "
            f"({scores[0] - reference:+.4f}; bound -{max_drop})")
        ranking: list[str] = []
        sensitivity: dict[str, float] = {}
        if reference - scores[0] > max_drop:
            sensitivity = layer_sensitivity(fp32_path, all_int8, images[:SENSITIVITY_IMAGES])
            ranking = sorted(sensitivity, key=lambda name: -sensitivity[name])
            log(f"INT8 fallback: {len(ranking)} quantized layers ranked by sensitivity; searching how many of the "
                "most sensitive to keep in float")

        def drop(count: int) -> float:
            if count not in scores:
                scores[count] = score(quantized(ranking[:count], Path(scratch) / f"float_{count}.onnx"))
                log(f"INT8 fallback: {count} most sensitive layer(s) in float: {scores[count]:.4f} "
                    f"({scores[count] - reference:+.4f})")
            return reference - scores[count]

        kept = fewest_in_float(len(ranking), drop, max_drop)
        if kept == len(ranking) and ranking:
            scores[kept] = reference  # nothing quantized: the float model
            log(f"INT8 fallback: no INT8 layer keeps the drop within {max_drop}: every layer stays float")
        quantized(ranking[:kept], int8_path)
    return {
        "kept_in_float": ranking[:kept],
        "fallback": {
            "max_drop": max_drop,
            "metric": metric,
            "float": reference,
            "int8": scores[kept],
            "every_layer_int8": scores[0],
            "searched": {str(k): v for k, v in sorted(scores.items())},
            **({"quantized_layers": len(ranking)} if ranking else {}),
            "sensitivity": {name: _rounded(sensitivity[name]) for name in ranking[:kept]},
            "ranking": "noise-to-signal power of each layer's quantized weights and inputs "
                       "(onnxruntime.quantization.qdq_loss_debug), most sensitive first",
        },
    }


def _rounded(value: float) -> float:
    return float(f"{value:.3g}") if math.isfinite(value) else value
