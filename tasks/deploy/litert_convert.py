"""Convert a ``torch.export`` program (``.pt2``) to a LiteRT flatbuffer (``.tflite``); INT8 on request.

Run by :func:`tasks.deploy.mobile.write_tflite` as a script in a subprocess whose ``PYTHONPATH`` puts the
LiteRT layer (``.venv/litert``: litert-torch and its dependencies, ``constraints-litert.txt``) in front
of Kestrel's environment: litert-torch 0.10 needs typing-extensions < 4.13, older than the one the rest of
Kestrel pins. It imports no Kestrel module, only torch, litert-torch and ai-edge-quantizer.

    python litert_convert.py PROGRAM.pt2 OUT.tflite [CALIBRATION.npy | --quantized]

With calibration images (uint8, ``(N, H, W, 3)``), ai-edge-quantizer makes the convolutions INT8 (weights
per channel, activations per tensor, ranges from the images); the rest of the graph (the input's scaling,
box decoding, NMS) stays float, so that the outputs keep their float types. With ``--quantized`` the program is
already INT8 (a QAT network's, pt2e quantize / dequantize operations with the scales it learned): litert-torch's
static QDQ conversion makes those int8 tensors and operators, with no calibration.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def convert(program_path: str, output: str, quantized: bool = False) -> None:
    import litert_torch
    import torch

    program = torch.export.load(program_path)
    inputs = program.graph_signature.user_inputs
    sample = tuple(torch.zeros(node.meta["val"].shape, dtype=node.meta["val"].dtype)
                   for node in program.graph.nodes if node.op == "placeholder" and node.name in inputs)
    options = {}
    if quantized:  # quantize / dequantize pairs of pt2e (static ranges) become int8 tensors and operators
        from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
        from litert_torch.quantize.quant_config import QuantConfig

        static = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
        options["quant_config"] = QuantConfig(pt2e_quantizer=static)
    # functionalized first: torchvision's anchor code leaves an in-place detach_ that the re-export refuses
    litert_torch.convert(program.run_decompositions({}).module(), sample, **options).export(output)


def quantize(source: str, output: str, calibration_path: str) -> None:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import qtyping, quantizer, recipe_manager

    operations = qtyping.TFLOperationName
    recipe = recipe_manager.RecipeManager()
    for operation in (operations.CONV_2D, operations.DEPTHWISE_CONV_2D, operations.FULLY_CONNECTED):
        recipe.add_static_config(regex=".*", operation_name=operation, activation_num_bits=8, weight_num_bits=8)
    images = np.load(calibration_path)
    engine = quantizer.Quantizer(source, recipe.get_quantization_recipe())
    (name,) = Interpreter(model_path=source).get_signature_list()["serving_default"]["inputs"]
    ranges = engine.calibrate({"serving_default": [{name: image[None]} for image in images]})
    engine.quantize(ranges).export_model(output, overwrite=True)


def main(argv: list[str]) -> None:
    program, output, *calibration = argv
    if calibration == ["--quantized"]:  # a QAT network's program: its scales are in it
        convert(program, output, quantized=True)
        return
    if not calibration:
        convert(program, output)
        return
    with tempfile.TemporaryDirectory() as scratch:
        float_file = str(Path(scratch) / "float.tflite")
        convert(program, float_file)
        quantize(float_file, output, calibration[0])


if __name__ == "__main__":
    main(sys.argv[1:])
