"""What a benchmark measures: Kestrel networks built from their configs, each in every runtime, and
torchvision's reference models.

A *subject* is one network (a config's, with a checkpoint's weights when there is one) and its
*forms*: the PyTorch module, its exported files, and for detection torchvision's own pipeline on the
same weights. Every form is a callable on a uint8 batch ``(N, 3, H, W)``, and the timing calls it
on the same batches as the others.

Forms (``RUNTIMES``):

- ``eager``: the network in PyTorch as Kestrel runs it for inference (:func:`backbones.inference_copy`:
  batch norms folded, channels-last);
- ``torchvision`` (detection): torchvision's ``SSD.forward`` on the same module and weights —
  ``GeneralizedRCNNTransform``, the backbone and head, ``postprocess_detections`` (a loop over
  classes) — called on float images in [0, 1], as torchvision's detectors take them;
- ``onnx``, ``onnx_int8``: the exported file in ONNX Runtime (float, and INT8 as ``--int8 true``
  writes it);
- ``openvino``, ``openvino_int8``: the same in OpenVINO (when it is installed);
- ``executorch``, ``executorch_int8``, ``tflite``, ``tflite_int8``: the phone files (``export --format
  executorch|tflite``, float and ``--int8 true``) at the network's input size, in the ExecuTorch runtime and the
  LiteRT interpreter (both XNNPACK), batch 1 only, as a phone runs them, on images resized to the file's input
  size beforehand (not timed: an app's camera pipeline scales its frames);
- ``network_onnx``, ``network_openvino``, ``network_executorch``, ``network_tflite``: the network alone in that
  runtime — normalization, backbone and head on images resized to its input size beforehand (not timed), no
  decoding, NMS, upsampling or argmax — so that a file's row over its network's says what its pre- and
  post-processing cost.

References are torchvision's ``ssdlite320_mobilenet_v3_large``, ``deeplabv3_mobilenet_v3_large`` and
``lraspp_mobilenet_v3_large``, untrained (no weights are downloaded). Their ``eager`` form is the
model as torchvision's users run it: the detector whole (transform, network, post-processing), the
segmenters on the normalized image at the input's size with the argmax of their logits. Exported,
the segmenters are whole (normalization and argmax inside); the detector is its backbone and head
on a 320x320 input resized beforehand (not timed): torchvision's post-processing does not export
faithfully (tracing freezes its data-dependent sizes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from backbones import inference_copy

from ..deploy.export import export_onnx, onnx_to_openvino, write_onnx_metadata
from ..deploy.quantize import DEFAULT_KEEP_FLOAT, quantize_int8
from ..deploy.runtime import ExportedModel, file_size_mb
from ..provenance import backbone_name

log = logging.getLogger(__name__)

PHONE_RUNTIMES = ("executorch", "executorch_int8", "tflite", "tflite_int8")
NETWORK_RUNTIMES = ("network_onnx", "network_openvino", "network_executorch", "network_tflite")
RUNTIMES = ("eager", "torchvision", "onnx", "onnx_int8", "openvino", "openvino_int8", *PHONE_RUNTIMES,
            *NETWORK_RUNTIMES)
RUNTIME_NAMES = {"eager": "PyTorch eager", "torchvision": "torchvision's pipeline (same weights)",
                 "onnx": "ONNX Runtime", "onnx_int8": "ONNX Runtime INT8", "openvino": "OpenVINO",
                 "openvino_int8": "OpenVINO INT8", "executorch": "ExecuTorch", "executorch_int8": "ExecuTorch INT8",
                 "tflite": "LiteRT", "tflite_int8": "LiteRT INT8", "network_onnx": "ONNX Runtime, network only",
                 "network_openvino": "OpenVINO, network only", "network_executorch": "ExecuTorch, network only",
                 "network_tflite": "LiteRT, network only"}
REFERENCES = {"detect": ["ssdlite320_mobilenet_v3_large"],
              "segment": ["deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]}
_SUFFIXES = {"onnx": "model.onnx", "onnx_int8": "model_int8.onnx", "openvino": "model.xml",
             "openvino_int8": "model_int8.xml"}


@dataclass
class Form:
    """One way of running a subject: a callable on the benchmark's batches and what it is."""

    runtime: str
    call: Callable[[Any], Any]
    prepare: Callable[[torch.Tensor], Any] = lambda batch: batch  # untimed: the batch as this form takes it
    file: Path | None = None
    size_mb: float | None = None
    batch_one: bool = False  # a phone file: timed at batch 1 only


@dataclass
class Subject:
    """A network measured in several forms (see the module docstring)."""

    name: str
    task: str
    backbone: str
    head: str
    input_size: tuple[int, int]
    params: float
    gflops: float
    reference: bool = False
    network: nn.Module | None = None  # the module as trained (Kestrel's subjects)
    same_as: str | None = None  # a reference holding that Kestrel subject's weights
    config: Path | None = None
    checkpoint: Path | None = None
    evaluation: dict[str, Any] = field(default_factory=dict)  # the task's evaluator options
    forms: dict[str, Form] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def count_gflops(network: nn.Module, example: Any) -> float:
    """GFLOPs of one call (torch's FLOP counter: a multiply-add is 2 FLOPs)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        network(example)
    return counter.get_total_flops() / 1e9


def state_size_mb(network: nn.Module) -> float:
    """The network's weights in MB, as a checkpoint holds them (float32)."""
    return sum(t.numel() * t.element_size() for t in network.state_dict().values()) / 1e6


def available_runtimes(asked: list[str]) -> list[str]:
    """The ones of ``asked`` this installation can run (OpenVINO, ExecuTorch and LiteRT are optional); a missing
    one is logged."""
    import importlib.util

    from ..deploy.mobile import LITERT_LAYER

    available = list(asked)
    for runtime, needs, have in (("openvino", "pip install openvino", importlib.util.find_spec("openvino")),
                                 ("executorch", "pip install executorch", importlib.util.find_spec("executorch")),
                                 ("tflite", f"make install (litert-torch in {LITERT_LAYER})",
                                  (LITERT_LAYER / "litert_torch").is_dir())):
        missing = [r for r in available if runtime in r]
        if missing and not have:
            log.warning("%s is not installed: %s left out (%s)", runtime, ", ".join(missing), needs)
            available = [r for r in available if r not in missing]
    return available


def export_forms(subject: Subject, network: nn.Module, metadata: dict[str, Any], folder: Path,
                 runtimes: list[str], calibration: list[np.ndarray], threads: int,
                 example: torch.Tensor | None = None, prepare: Callable[[torch.Tensor], Any] | None = None) -> None:
    """Export ``network`` for the exported ``runtimes`` into ``folder`` and add their forms to ``subject``.

    INT8 is ONNX Runtime's static QDQ quantization with the export's defaults (``tasks.deploy.quantize``),
    calibrated on ``calibration`` images; the OpenVINO files are the ONNX ones read by OpenVINO.
    ``example`` is the input to trace with (a fixed size; default: the export's, sizes dynamic) and
    ``prepare`` what the forms do to a batch first, untimed.
    """
    exported = [r for r in runtimes if r in _SUFFIXES]
    if not exported:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fp32 = export_onnx(network, folder / _SUFFIXES["onnx"], {**metadata, "precision": "fp32"}, example=example)
    files = {"onnx": fp32}
    if any(r.endswith("int8") for r in exported):
        int8 = folder / _SUFFIXES["onnx_int8"]
        quantize_int8(fp32, int8, iter(calibration), DEFAULT_KEEP_FLOAT)
        write_onnx_metadata(int8, {**metadata, "precision": "int8", "int8": {"calibration_images": len(calibration)}})
        files["onnx_int8"] = int8
    for runtime in ("openvino", "openvino_int8"):
        if runtime in exported:
            source = files["onnx_int8" if runtime.endswith("int8") else "onnx"]
            precision = "int8" if runtime.endswith("int8") else "fp32"
            files[runtime] = onnx_to_openvino(source, folder / _SUFFIXES[runtime],
                                              {**metadata, "format": "openvino", "precision": precision})
    for runtime in exported:
        model = ExportedModel(files[runtime], threads=threads, spinning=False)
        subject.forms[runtime] = Form(runtime, model, prepare or (lambda batch: batch), files[runtime],
                                      file_size_mb(files[runtime]))


def phone_forms(subject: Subject, network: nn.Module, metadata: dict[str, Any], folder: Path, runtimes: list[str],
                calibration: list[np.ndarray], threads: int) -> None:
    """The phone files of ``runtimes`` (:data:`PHONE_RUNTIMES`) at the network's input size, written into ``folder``
    as ``export --format executorch|tflite [--int8 true]`` writes them, added to ``subject``'s forms."""
    from ..deploy.mobile import phone_metadata, write_phone_file

    size = list(subject.input_size)
    folder.mkdir(parents=True, exist_ok=True)
    for runtime in [r for r in PHONE_RUNTIMES if r in runtimes]:
        int8 = runtime.endswith("int8")
        path = folder / f"model{'_int8' if int8 else ''}{'.tflite' if runtime.startswith('tflite') else '.pte'}"
        info = phone_metadata(network, {**metadata, "format": runtime.split("_")[0],
                                        "precision": "int8" if int8 else "fp32"}, size)
        images = [torch.from_numpy(image) for image in calibration] if int8 else None
        log.info("writing %s", path)
        write_phone_file(network, path, info, size, images)
        subject.forms[runtime] = Form(runtime, ExportedModel(path, threads=threads), _resized(size), path,
                                      file_size_mb(path), batch_one=True)


class NetworkOnly(nn.Module):
    """A Kestrel network without its pre- and post-processing: uint8 images already at its input size, normalized,
    through the backbone and head; the detector's box regression and class logits, the segmenter's logits at
    its input size, pose's heatmaps (one pass: no flip test)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        network = self.network
        x = network.input(images)
        if hasattr(network, "heatmaps"):
            return {"heatmaps": network.heatmaps(x)}
        if hasattr(network, "logits"):
            return {"logits": network.logits(x, aux=False)["out"]}
        out = network.head(list(network.backbone(x).values()))
        return {"bbox_regression": out["bbox_regression"], "cls_logits": out["cls_logits"]}


def network_forms(subject: Subject, network: nn.Module, metadata: dict[str, Any], folder: Path,
                  runtimes: list[str], threads: int) -> None:
    """:class:`NetworkOnly` in the runtimes of ``runtimes`` (:data:`NETWORK_RUNTIMES`), called on images resized to
    the input size beforehand (untimed)."""
    from ..deploy.mobile import phone_metadata, write_phone_file

    asked = [r for r in NETWORK_RUNTIMES if r in runtimes]
    if not asked:
        return
    size = list(subject.input_size)
    alone = NetworkOnly(network).eval()
    example = torch.zeros(1, 3, *size, dtype=torch.uint8)
    info = {**metadata, "precision": "fp32", "network_only": True}
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    if {"network_onnx", "network_openvino"} & set(asked):
        files["network_onnx"] = export_onnx(alone, folder / "network.onnx", {**info, "format": "onnx"}, example=example)
    if "network_openvino" in asked:
        files["network_openvino"] = onnx_to_openvino(files["network_onnx"], folder / "network.xml",
                                                     {**info, "format": "openvino"})
    for runtime, name in (("network_executorch", "network.pte"), ("network_tflite", "network.tflite")):
        if runtime in asked:
            described = phone_metadata(alone, {**info, "format": runtime.removeprefix("network_")}, size)
            files[runtime] = write_phone_file(alone, folder / name, described, size)
    prepare = _resized(size)
    for runtime in asked:
        phone = runtime in ("network_executorch", "network_tflite")
        model = ExportedModel(files[runtime], threads=threads, spinning=False)
        subject.forms[runtime] = Form(runtime, model, prepare, files[runtime], file_size_mb(files[runtime]),
                                      batch_one=phone)


# ------------------------------------------------------------------------------------------- Kestrel
def kestrel_subject(name: str, task: Any, runtimes: list[str], input_hw: tuple[int, int], folder: Path,
                    calibration: list[np.ndarray], threads: int, config: Path | None = None,
                    checkpoint: Path | None = None) -> Subject:
    """A Kestrel task's network in ``runtimes`` (exported into ``folder``)."""
    network = task.model.cpu().eval()
    example = torch.zeros(1, 3, *input_hw, dtype=torch.uint8)
    subject = Subject(name, task.task, backbone_name(network), type(network).__name__,
                      (task.image_size, task.image_size) if task.task != "pose" else tuple(task.image_size),
                      sum(p.numel() for p in network.parameters()) / 1e6, count_gflops(network, example),
                      network=network, config=config, checkpoint=checkpoint, evaluation=task.evaluator_options())
    if "eager" in runtimes:
        subject.forms["eager"] = Form("eager", inference_copy(network), size_mb=state_size_mb(network))
    if "torchvision" in runtimes and task.task == "detect":
        from torchvision.models.detection.ssd import SSD

        subject.forms["torchvision"] = Form(
            "torchvision", lambda images: SSD.forward(network, list(images)),
            prepare=lambda batch: [image.float() / 255 for image in batch], size_mb=state_size_mb(network))
    metadata = {**task.metadata(), "format": "onnx", "backbone": subject.backbone, "network": subject.head,
                "checkpoint": str(checkpoint) if checkpoint else None}
    export_forms(subject, network, metadata, folder, runtimes, calibration, threads)
    phone_forms(subject, network, metadata, folder, runtimes, calibration, threads)
    network_forms(subject, network, metadata, folder, runtimes, threads)
    return subject


# ------------------------------------------------------------------------------------------- references
class _Normalized(nn.Module):
    """uint8 RGB in, ``(x / 255 - mean) / std`` into ``body``; for segmenters the argmax of its ``out``."""

    def __init__(self, body: nn.Module, mean: list[float], std: list[float], segment: bool):
        super().__init__()
        self.body = body
        self.segment = segment
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images.float() / 255 - self.mean) / self.std
        if self.segment:
            return {"labels": self.body(x)["out"].argmax(1)}
        out = self.body.head(list(self.body.backbone(x).values()))
        return {"bbox_regression": out["bbox_regression"], "cls_logits": out["cls_logits"]}


def _resized(size: int | list[int]) -> Callable[[torch.Tensor], torch.Tensor]:
    """What resizes a uint8 batch to ``size`` (a side, or height and width), untimed."""
    size = (size, size) if isinstance(size, int) else tuple(size)

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        if tuple(batch.shape[-2:]) == size:
            return batch
        resized = F.interpolate(batch.float(), size, mode="bilinear", align_corners=False)
        return resized.round().clamp(0, 255).to(torch.uint8)

    return prepare


def torchvision_weights(name: str, subjects: list[Subject]) -> tuple[Subject, dict[str, torch.Tensor]] | None:
    """The first trained Kestrel detector among ``subjects`` in the layout of torchvision's ``name``, and its
    weights as torchvision's model holds them (``SSDLite.to_torchvision``), or None."""
    import torchvision

    for subject in subjects:
        if subject.task != "detect" or subject.checkpoint is None or not hasattr(subject.network, "to_torchvision"):
            continue
        classes = subject.network.num_classes + 1
        template = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=classes)
        try:
            return subject, subject.network.to_torchvision(template.state_dict())
        except ValueError:
            continue
    return None


def reference_subject(name: str, runtimes: list[str], input_hw: tuple[int, int], folder: Path,
                      calibration: list[np.ndarray], threads: int,
                      weights: tuple[Subject, dict[str, torch.Tensor]] | None = None) -> Subject:
    """One of torchvision's reference models (:data:`REFERENCES`) in ``runtimes``: untrained, or with
    ``weights`` (:func:`torchvision_weights`: a Kestrel detector's, converted)."""
    import torchvision

    example = torch.zeros(1, 3, *input_hw, dtype=torch.uint8)
    if name.startswith("ssdlite"):
        classes = weights[0].network.num_classes + 1 if weights else 91
        model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=classes).eval()
        if weights:
            model.load_state_dict(weights[1])
        side = model.transform.min_size[0]
        network = _Normalized(model, model.transform.image_mean, model.transform.image_std, segment=False).eval()
        subject = Subject(name, "detect", "mobilenet_v3_large", "torchvision SSD", (side, side),
                          sum(p.numel() for p in model.parameters()) / 1e6,
                          count_gflops(network, _resized(side)(example)), reference=True)
        if "eager" in runtimes:
            subject.forms["eager"] = Form("eager", model, lambda batch: [image.float() / 255 for image in batch],
                                          size_mb=state_size_mb(model))
        metadata = {"task": "detect", "input_size": [side, side], "format": "onnx", "reference": name,
                    "outputs": "backbone and head only"}
        exported = [r for r in runtimes if r in _SUFFIXES]
        if exported:
            calibration = [_resized(side)(torch.from_numpy(c)[None])[0].numpy() for c in calibration]
            export_forms(subject, network, metadata, folder, exported, calibration, threads,
                         example=_resized(side)(example), prepare=_resized(side))
        subject.notes.append(f"{name}: exported as backbone and head only, on {side}x{side} images resized "
                             "beforehand (not timed); its eager form is the whole detector")
        if weights:
            subject.name = f"{name} ({weights[0].name}'s weights)"
            subject.checkpoint = weights[0].checkpoint
            subject.same_as = weights[0].name
            subject.notes.append(f"{name} holds {weights[0].name}'s trained weights, converted to torchvision's layout "
                                 "(SSDLite.to_torchvision): the two are one detector")
        else:
            subject.notes.append(f"{name} is untrained: its scores are flat, so every class brings its "
                                 "300 candidates to NMS, which a trained detector's do not")
        return subject
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=21).eval()
    network = _Normalized(model, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], segment=True).eval()
    subject = Subject(name, "segment", "mobilenet_v3_large", f"torchvision {type(model).__name__}", input_hw,
                      sum(p.numel() for p in model.parameters()) / 1e6, count_gflops(network, example),
                      reference=True)
    if "eager" in runtimes:
        subject.forms["eager"] = Form("eager", network, size_mb=state_size_mb(model))
    metadata = {"task": "segment", "input_size": list(input_hw), "format": "onnx", "reference": name}
    export_forms(subject, network, metadata, folder, runtimes, calibration, threads)
    return subject
