"""``python -m tasks.<task> export``: the whole network as an ONNX or OpenVINO file, checked against PyTorch.

The exported graph is the network's own forward (``heads``): uint8 images in, decoded predictions out,
scaling, normalization, resizing and decoding inside; detection's per-class NMS is ONNX's
``NonMaxSuppression``. ``torch.onnx``'s TorchScript exporter writes it with the batch (and for
detection and segmentation the image size) dynamic; ``torch.export``-based export fails on
torchvision's detection code (pytorch/vision #9306). Every file carries a ``kestrel`` metadata entry
(task, input size, class or keypoint names, where it came from), and every export is run once on
validation images in its runtime and compared with PyTorch before its path is printed.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import pytorch_lightning as pl
import torch
from torch import nn
from tqdm import tqdm

from backbones._weights import load_weights

from ..provenance import backbone_name, file_sha256, kestrel_version
from ..qat import KEPT_IN_FLOAT, is_converted, is_prepared
from ..qat import convert as convert_qat
from .agreement import agreement, budget, faithful, summarize
from .fallback import quantize_within
from .mobile import (
    COREML_SUFFIX,
    PTE_SUFFIX,
    TFLITE_SUFFIX,
    check_coreml,
    fit_image,
    phone_metadata,
    write_coreml,
    write_phone_file,
)
from .quantize import DEFAULT_KEEP_FLOAT, QUANTIZED_OPS, Calibration, KeepFloat, qdq_symbolics, quantize_int8
from .runtime import (
    METADATA_KEY,
    ONNX_SUFFIX,
    OPENVINO_SUFFIX,
    ExportedModel,
    _openvino,
    file_size_mb,
    load_exported,
    openvino_core,
    run_images,
)

if TYPE_CHECKING:
    from .._base import KestrelTask

OPSET = 17
CHECK_IMAGES = 8
MOBILE_FORMATS = ("executorch", "tflite", "coreml")


def example_input(metadata: dict[str, Any]) -> torch.Tensor:
    """A uint8 batch to trace with: pose crops at the input size; other tasks an odd size unlike the input
    size, so that the graph keeps its resize rather than a shortcut for input-sized images."""
    height, width = metadata["input_size"]
    if metadata["task"] == "pose":
        return torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8)
    return torch.randint(0, 256, (1, 3, height + 37, width + 21), dtype=torch.uint8)


def export_onnx(network: nn.Module, path: str | Path, metadata: dict[str, Any],
                example: torch.Tensor | None = None) -> Path:
    """Write ``network`` (in eval mode, on the CPU) to ``path`` as ONNX with ``metadata``.

    Traced on :func:`example_input` (the image size stays dynamic, pose's crops excepted), or on
    ``example`` for a network of one input size (only the batch stays dynamic).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fixed_size = example is not None or metadata["task"] == "pose"
    example = example_input(metadata) if example is None else example
    with torch.no_grad():
        outputs = list(network(example))
    dynamic = {0: "batch"} if fixed_size else {0: "batch", 2: "height", 3: "width"}
    axes = {"images": dynamic, **{name: {0: "batch"} for name in outputs}}
    if metadata["task"] == "segment":
        axes["labels"] = {0: "batch", 1: "height", 2: "width"}
    with warnings.catch_warnings():  # tracing notes on Python numbers; the export is checked on real images instead
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.onnx")
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")  # flips: Slice with step -1
        with qdq_symbolics(OPSET):  # a QAT network's quantize / dequantize operations (tasks.qat.convert)
            torch.onnx.export(network, (example,), str(path), input_names=["images"], output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    write_onnx_metadata(path, metadata)
    return path


def write_onnx_metadata(path: str | Path, metadata: dict[str, Any]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    model.producer_name = "kestrel"
    onnx.save(model, str(path))


def onnx_to_openvino(onnx_path: str | Path, xml_path: str | Path, metadata: dict[str, Any]) -> Path:
    """Convert an ONNX export to OpenVINO IR (``.xml`` + ``.bin``, float weights kept as they are).

    Read by the runtime's ONNX frontend rather than ``openvino.convert_model``, whose converter sends
    usage telemetry unless its user opted out."""
    ov = _openvino()
    model = openvino_core().read_model(str(onnx_path))
    model.set_rt_info(json.dumps(metadata), [METADATA_KEY])
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return xml_path


def split_images(datamodule: pl.LightningDataModule, stage: str, count: int, seed: int = 0) -> list[torch.Tensor]:
    """``count`` images of a split as the network takes them (evaluation items: no augmentation), a
    fixed random choice."""
    dataset = datamodule.dataset(datamodule.split(stage), train=False)
    chosen = np.random.default_rng(seed).permutation(len(dataset))[:count]
    return [dataset[int(i)][0] for i in sorted(chosen)]


FORMATS = {"onnx": ONNX_SUFFIX, "openvino": OPENVINO_SUFFIX, "executorch": PTE_SUFFIX, "tflite": TFLITE_SUFFIX,
           "coreml": COREML_SUFFIX}


def export_task(trainer: pl.Trainer, task: KestrelTask, datamodule: pl.LightningDataModule | None,
                ckpt_path: str | None, format: str, int8: bool, output: str | None, calibration_images: int = 64,
                int8_calibration: Calibration = "percentile",
                int8_float: Sequence[KeepFloat] = DEFAULT_KEEP_FLOAT,
                input_size: Sequence[int] | None = None, int8_max_drop: float | None = None) -> Path:
    """What ``python -m tasks.<task> export`` does (see :meth:`tasks.cli.KestrelTrainer.export`)."""
    if format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if int8_max_drop is not None:
        _check_max_drop(int8_max_drop, int8, format)
    if input_size is not None and (len(input_size) != 2 or min(input_size) < 1):
        raise ValueError(f"--input_size takes a height and a width in pixels, e.g. --input_size [320, 320]; "
                         f"got {list(input_size)}")
    if input_size is not None and format not in MOBILE_FORMATS:
        raise ValueError(f"--input_size fixes a mobile file's input ({', '.join(MOBILE_FORMATS)}); {format} files "
                         "take images of any size")
    if int8 and calibration_images < 1:
        raise ValueError(f"--calibration_images is how many training images INT8 calibrates on, at least 1; got "
                         f"{calibration_images}")
    if int8 and datamodule is None and format != "coreml":  # Core ML's INT8 is its weights': no calibration
        raise ValueError("--int8 true calibrates on training images: give the data (--data.root ...)")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"--ckpt_path {str(ckpt_path)!r} does not exist")
    task.initialize(datamodule)  # init_from
    if ckpt_path:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        task.on_load_checkpoint(checkpoint)  # a QAT run's: fake quantization in first
        load_weights(task, checkpoint.get("state_dict", checkpoint), repr(str(ckpt_path)))
    source = ckpt_path or task.init_from
    if not source:
        warnings.warn("exporting the network's initial weights: no --ckpt_path and no model.init_from", stacklevel=2)
    network = task.model.cpu().eval()
    if is_prepared(network):
        if format == "coreml":
            raise ValueError(f"{source} was trained with fake quantization: it exports to INT8 as onnx, openvino, "
                             "executorch or tflite; Core ML's INT8 quantizes weights only (--format coreml --int8 true "
                             "of the float checkpoint)")
        if not int8:
            raise ValueError(f"{source} was trained with fake quantization (model.quantization qat): it exports to "
                             "INT8 with the scales it learned; add --int8 true")
        if int8_max_drop is not None:
            raise ValueError(f"--int8_max_drop chooses layers to keep in float in post-training INT8 of a float "
                             f"checkpoint; {source} was trained with fake quantization and exports with the scales "
                             "it learned (its first and last convolutions in float): leave --int8_max_drop out")
        network = convert_qat(network, fold_weights=format != "tflite")  # (litert-torch reads unfolded ones)
    suffix = FORMATS[format]
    path = Path(output) if output else _export_folder(trainer, ckpt_path) / f"model{'_int8' if int8 else ''}{suffix}"
    metadata = {
        **task.metadata(),
        "format": format,
        "precision": "int8" if int8 else "fp32",
        "backbone": backbone_name(network),
        "network": type(network).__name__,
        "checkpoint": str(source) if source else None,
        "checkpoint_sha256": file_sha256(source) if source else None,
        "kestrel": kestrel_version(),
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)  # INT8 and OpenVINO write it from the scratch ONNX file
    if format in MOBILE_FORMATS:
        _export_mobile(task, network, datamodule, path, metadata, input_size, int8, calibration_images)
    else:
        scorer = None if int8_max_drop is None else _validation_score(task, datamodule)
        _export_onnx_or_openvino(network, datamodule, path, format, metadata, int8, calibration_images,
                                 int8_calibration, int8_float, int8_max_drop, scorer)
    print(f"Wrote {path} ({file_size_mb(path):.2f} MB) in {time.perf_counter() - started:.0f} s")
    if format == "coreml":
        print(check_coreml(path))
    elif datamodule is not None:
        images = split_images(datamodule, "val", CHECK_IMAGES)
        if format in MOBILE_FORMATS:  # the file's fixed size, so that both take the same pixels
            images = [fit_image(image, metadata["fixed_input_size"]) for image in images]
        _check(task.task, network, path, images, int8)
    print(path)
    return path


def _export_mobile(task: KestrelTask, network: nn.Module, datamodule: pl.LightningDataModule | None, path: Path,
                   metadata: dict[str, Any], input_size: Sequence[int] | None, int8: bool,
                   calibration_images: int) -> None:
    size = [int(side) for side in (input_size or task.input_size())]
    if task.task == "pose" and size != list(task.input_size()):
        raise ValueError(f"--input_size: a pose file takes person crops of the model's size {list(task.input_size())}, "
                         f"got {size}")
    metadata.update(phone_metadata(network, metadata, size))
    if metadata["format"] == "coreml":
        if int8:
            metadata["int8"] = {"quantizer": "coremltools linear_quantize_weights: weights per channel (int8), "
                                             "computed in float32"}
        print(f"Exporting {metadata['network']} on {metadata['backbone']} to Core ML (ML program), RGB image "
              f"input {size[0]}x{size[1]} (converted by coremltools: about a minute)")
        write_coreml(network, path, metadata, size, int8)
        return
    tflite = metadata["format"] == "tflite"
    images = None
    if int8 and is_converted(network):
        metadata["int8"] = _qat_int8()
    elif int8:
        images = split_images(datamodule, "train", calibration_images)
        metadata["int8"] = {"calibration_images": len(images), "calibration_split": datamodule.split_name("train"),
                            "quantizer": "ai-edge-quantizer: convolutions and fully connected layers, weights per "
                                         "channel, activations per tensor (int8)" if tflite else
                                         "executorch XNNPACKQuantizer (pt2e): convolutions and linear layers, weights "
                                         "per channel, activations per tensor (int8)"}
        print(f"Quantizing to INT8, calibrating on {len(images)} training images")
        images = tqdm(images, desc="calibration", unit="img", leave=False)
    if tflite:
        print(f"Exporting {metadata['network']} on {metadata['backbone']} to LiteRT, input 1x{size[0]}x{size[1]}x3 "
              "(converted by litert-torch: about a minute)")
    else:
        print(f"Exporting {metadata['network']} on {metadata['backbone']} to ExecuTorch (XNNPACK), "
              f"input 1x3x{size[0]}x{size[1]} (traced, then lowered to XNNPACK: about a minute)")
    write_phone_file(network, path, metadata, size, images)


def _export_onnx_or_openvino(network: nn.Module, datamodule: pl.LightningDataModule | None, path: Path, format: str,
                             metadata: dict[str, Any], int8: bool, calibration_images: int,
                             int8_calibration: Calibration, int8_float: Sequence[KeepFloat],
                             int8_max_drop: float | None = None,
                             score: tuple[str, Callable[[Path, dict[str, Any]], float]] | None = None) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        own_int8 = is_converted(network)  # a QAT network: INT8 as it is exported
        onnx_path = path if format == "onnx" and (not int8 or own_int8) else Path(scratch) / "model.onnx"
        print(f"Exporting {metadata['network']} on {metadata['backbone']} to ONNX (opset {OPSET})")
        if int8 and own_int8:  # a QAT checkpoint's: its own scales, written as QDQ
            metadata["int8"] = _qat_int8()
            export_onnx(network, onnx_path, metadata)
        else:
            export_onnx(network, onnx_path, {**metadata, "format": "onnx", "precision": "fp32"})
        if int8 and not own_int8:
            images = split_images(datamodule, "train", calibration_images)
            metadata["int8"] = {"calibration_images": len(images), "calibration_split": datamodule.split_name("train"),
                                "calibration": int8_calibration,
                                "quantized": f"{', '.join(QUANTIZED_OPS)}: weights per channel (int8), "
                                             "activations per tensor (uint8)",
                                "kept_in_float": list(int8_float)}
            int8_onnx = path if format == "onnx" else Path(scratch) / "model_int8.onnx"
            print(f"Quantizing to INT8 (ONNX Runtime QDQ), calibrating on {len(images)} training images")
            progress = tqdm(images, desc="calibration", unit="img", leave=False)
            if int8_max_drop is None:
                quantize_int8(onnx_path, int8_onnx, (image.numpy() for image in progress), int8_float,
                              int8_calibration)
            else:
                float_metadata = {**metadata, "format": "onnx", "precision": "fp32"}
                metric, scorer = score
                metadata["int8"].update(quantize_within(
                    onnx_path, int8_onnx, [image.numpy() for image in progress],
                    lambda candidate: scorer(candidate, float_metadata), int8_max_drop, int8_calibration, metric))
            onnx_path = int8_onnx
        if format == "onnx":
            write_onnx_metadata(path, metadata)
        else:
            onnx_to_openvino(onnx_path, path, metadata)


def _check_max_drop(max_drop: float, int8: bool, format: str) -> None:
    if not int8:
        raise ValueError("--int8_max_drop bounds the metric's drop of post-training INT8: add --int8 true")
    if not max_drop >= 0:
        raise ValueError(f"--int8_max_drop is how much the validation metric may drop, at least 0; got {max_drop}")
    if format not in ("onnx", "openvino"):
        raise ValueError(f"--int8_max_drop keeps layers in float in ONNX Runtime's INT8 (--format onnx or openvino); "
                         f"{format} files are not searched yet: export {format} INT8 without it, or train with "
                         "--model.quantization qat")


def _validation_score(task: KestrelTask, datamodule: pl.LightningDataModule
                      ) -> tuple[str, Callable[[Path, dict[str, Any]], float]]:
    """The task's main metric's name, and a function that gives its value on the validation split for an ONNX file
    (whose metadata it writes first), run in ONNX Runtime."""
    from ..evaluation.evaluate import evaluate

    def score(path: Path, metadata: dict[str, Any]) -> float:
        write_onnx_metadata(path, metadata)
        metrics, evaluator = evaluate(load_exported(path, task.task), datamodule, "validate", progress=True,
                                      **task.evaluator_options())
        return float(metrics[evaluator.main_metric])

    return task.main_metric, score


def _qat_int8() -> dict[str, Any]:
    return {"quantization": "qat", "scales": "learned in quantization-aware training (no calibration)",
            "quantizer": "executorch XNNPACKQuantizer (torchao pt2e QAT): convolutions and linear layers, weights per "
                         "channel, activations per tensor (int8)",
            "kept_in_float": list(KEPT_IN_FLOAT)}


def _check(task: str, network: nn.Module, path: Path, images: list[torch.Tensor], int8: bool) -> None:
    """Run the export on validation images and say how its outputs compare with PyTorch's."""
    exported = ExportedModel(path)
    with torch.no_grad():
        reference = run_images(network, images)
    candidate = run_images(exported, images)
    if "fixed_input_size" in exported.metadata:  # NMS over a fixed budget of candidates: the first detections
        reference = budget(reference, candidate)
    stats = agreement(task, reference, candidate, box_tolerance=1.0 if int8 else 1e-2)
    what = ("INT8 against the QAT network's own INT8 in PyTorch" if is_converted(network) else
            "INT8 against float PyTorch" if int8 else "against PyTorch")
    print(f"Checked {what} on {len(images)} validation images in {exported.runtime}: {summarize(task, stats)}")
    if not int8 and not faithful(task, stats):
        warnings.warn(f"{path} does not reproduce PyTorch on these images ({summarize(task, stats)}); "
                      "please report it with the model's config", stacklevel=2)


def _export_folder(trainer: pl.Trainer, ckpt_path: str | None) -> Path:
    """The run's ``export/`` folder: beside the checkpoint's ``checkpoints/``, else the new run's."""
    if ckpt_path and Path(ckpt_path).parent.name == "checkpoints":
        return Path(ckpt_path).parent.parent / "export"
    return Path(trainer.log_dir or trainer.default_root_dir) / "export"


