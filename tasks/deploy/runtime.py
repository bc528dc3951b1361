"""Running a Kestrel network on images: the PyTorch module, or an exported file in its runtime.

Every task's network takes uint8 RGB images ``(N, 3, H, W)`` and returns a dict of tensors (see
``heads``): detect ``boxes``/``scores``/``labels``/``num_detections``, segment ``labels``, pose
``keypoints``. An exported file has exactly that interface (its inputs and outputs carry those
names), so ONNX Runtime and OpenVINO stand in for the module: :func:`load_exported` returns a callable
with the module's behaviour, and :func:`run_images` runs either on a list of images of any sizes.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .mobile import (
    COREML_SUFFIX,
    METADATA_KEY,
    PTE_SUFFIX,
    TFLITE_SUFFIX,
    fit_image,
    read_coreml_metadata,
    read_pte_metadata,
    read_tflite_metadata,
)

Network = Callable[[torch.Tensor], dict[str, torch.Tensor]]

ONNX_SUFFIX = ".onnx"
OPENVINO_SUFFIX = ".xml"
EXPORTED_SUFFIXES = (ONNX_SUFFIX, OPENVINO_SUFFIX, PTE_SUFFIX, TFLITE_SUFFIX, COREML_SUFFIX)


def is_exported(path: str | Path | None) -> bool:
    """Whether ``path`` names an exported model (``.onnx``, OpenVINO's ``.xml``, ExecuTorch's ``.pte``,
    LiteRT's ``.tflite``, a Core ML ``.mlpackage`` folder) rather than a checkpoint."""
    return path is not None and Path(path).suffix.lower() in EXPORTED_SUFFIXES


def file_size_mb(path: str | Path) -> float:
    """An exported model's size in MB: the file, for OpenVINO IR with its ``.bin`` of weights, for a Core ML
    package the files in it."""
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    size = path.stat().st_size
    if path.suffix.lower() == OPENVINO_SUFFIX and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size / 1e6


def unbatch(outputs: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """A batch's outputs as one dict per image; padded detections cut to each image's ``num_detections``."""
    count = outputs.get("num_detections")
    per_image = []
    for i in range(len(next(iter(outputs.values())))):
        item = {k: v[i] for k, v in outputs.items() if k != "num_detections"}
        if count is not None:
            item = {k: v[: int(count[i])] for k, v in item.items()}
        per_image.append(item)
    return per_image


def run_images(network: Network, images: torch.Tensor | Sequence[torch.Tensor],
               batch_size: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Per image, the network's outputs.

    Args:
        network: The module (in eval mode) or an exported model from :func:`load_exported`.
        images: A uint8 batch ``(N, 3, H, W)``, or uint8 images ``(3, H, W)`` of any sizes: runs of
            equal size go through together, the others one by one.
        batch_size: Most images per call (None: no limit).
    """
    if isinstance(images, torch.Tensor):
        images = list(images)
    results: list[dict[str, torch.Tensor]] = []
    start = 0
    while start < len(images):
        end = start + 1
        while (end < len(images) and images[end].shape == images[start].shape
               and (batch_size is None or end - start < batch_size)):
            end += 1
        results += unbatch(network(torch.stack(images[start:end])))
        start = end
    return results


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``kestrel`` metadata of an exported file (task, input size, class or keypoint names, ...).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a Kestrel export (no such metadata) or cannot be read.
    """
    path = Path(path)
    if not (path.is_file() or path.suffix.lower() == COREML_SUFFIX and path.is_dir()):
        raise FileNotFoundError(f"exported model {str(path)!r} does not exist")
    if path.suffix.lower() == ONNX_SUFFIX:
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as err:  # noqa: BLE001 - protobuf raises many kinds
            raise ValueError(f"exported model {str(path)!r} is not a readable ONNX file: {err}") from None
        properties = {p.key: p.value for p in model.metadata_props}
        text = properties.get(METADATA_KEY)
    elif path.suffix.lower() == OPENVINO_SUFFIX:
        model = openvino_core().read_model(str(path))
        text = model.get_rt_info([METADATA_KEY]).astype(str) if model.has_rt_info([METADATA_KEY]) else None
    elif path.suffix.lower() == PTE_SUFFIX:
        text = read_pte_metadata(_executorch_program(path))
    elif path.suffix.lower() == TFLITE_SUFFIX:
        try:
            text = read_tflite_metadata(path)
        except Exception as err:  # noqa: BLE001 - flatbuffers raises many kinds on a foreign file
            raise ValueError(f"exported model {str(path)!r} is not a readable LiteRT file: {err}") from None
    elif path.suffix.lower() == COREML_SUFFIX:
        try:
            text = read_coreml_metadata(path)
        except Exception as err:  # noqa: BLE001 - protobuf raises many kinds
            raise ValueError(f"exported model {str(path)!r} is not a readable Core ML package: {err}") from None
    else:
        raise ValueError(f"{str(path)!r} is not an exported model: expected {' or '.join(EXPORTED_SUFFIXES)}")
    if not text:
        raise ValueError(f"exported model {str(path)!r} carries no '{METADATA_KEY}' metadata: it was not exported "
                         "by Kestrel (python -m tasks.<task> export)")
    return json.loads(text)


def _openvino():
    try:
        import openvino
    except ImportError:
        raise ImportError("OpenVINO is not installed: pip install openvino (constraints.txt pins it)") from None
    return openvino


def _executorch_program(path: Path):
    """The loaded program of a ``.pte`` file: one load per file and version, shared by its metadata and its run."""
    try:
        import executorch.runtime  # noqa: F401
    except ImportError:
        raise ImportError("ExecuTorch is not installed: pip install executorch (constraints.txt pins it)") from None
    stat = path.stat()
    try:
        return _load_executorch_program(str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    except Exception as err:  # noqa: BLE001 - the runtime raises RuntimeError or ValueError
        raise ValueError(f"exported model {str(path)!r} is not a readable ExecuTorch program: {err}") from None


@functools.lru_cache(maxsize=4)
def _load_executorch_program(path: str, modified: int, size: int):
    from executorch.runtime import Runtime

    with executorch_log_filtered():
        return Runtime.get().load_program(Path(path))


#: what ExecuTorch 1.5.1's runtime writes to stderr on every load, at its Info level (a compile-time setting of
#: its wheel): its probe of the CPU, which reads ARM-only files, and the thread pool's size
EXECUTORCH_NOISE = re.compile(r"\[(cpuinfo_utils|threadpool)\.cpp:\d+\] ")


@contextlib.contextmanager
def executorch_log_filtered() -> Iterator[None]:
    """Within this context, the lines that ExecuTorch's C++ runtime writes to the process's stderr are held back,
    and those that are not :data:`EXECUTORCH_NOISE` (warnings, errors) written out at its end."""
    descriptor = 2  # the process's stderr, which the C++ runtime writes to whatever Python's sys.stderr is
    sys.stderr.flush()
    saved = os.dup(descriptor)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), descriptor)
        try:
            yield
        finally:
            os.dup2(saved, descriptor)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines()
                    if not EXECUTORCH_NOISE.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


#: calls of one input shape after which :class:`ExportedModel` compiles an OpenVINO file for that shape alone
OPENVINO_STATIC_AFTER = 16
#: input shapes :class:`ExportedModel` compiles an OpenVINO file for, at most (the first to come that often)
OPENVINO_STATIC_SHAPES = 4


@functools.cache
def openvino_core():
    """The process's one OpenVINO ``Core``, kept until exit.

    One: a Core's first compiled model installs an alternate signal stack on the calling thread, and a
    destroyed Core puts back the one it found, so Cores destroyed in another order than they were made
    leave a freed stack installed (OpenVINO 2026.4.1); the next signal delivered on it — a DataLoader
    worker's or a subprocess's exit — crashes the process (seen in the test suite, and tested).
    """
    return _openvino().Core()


class ExportedModel:
    """An exported file run by its runtime, callable like the network it came from.

    ``.onnx`` runs in ONNX Runtime (CPU), ``.xml`` (OpenVINO IR) in OpenVINO (CPU; compiled again for an input
    shape that keeps coming, :meth:`_openvino_for`), ``.pte`` in the ExecuTorch runtime (XNNPACK), ``.tflite`` in
    the LiteRT interpreter (XNNPACK). A phone file takes one
    image of one size (``fixed_input_size`` in its metadata): each image is stretched to it
    (:func:`tasks.deploy.mobile.fit_image`), run, and its outputs mapped back to the image (boxes scaled,
    labels resized by nearest neighbour), as an app would; a ``.tflite`` detector's four outputs become
    Kestrel's boxes, scores, labels and ``num_detections``.

    Args:
        path: The file.
        threads: Intra-op threads (None: the runtime's default, one per physical core).
        spinning: Whether ONNX Runtime's threads keep spinning after a call (its default; the next call
            starts sooner). Off for timing beside other models, whose calls the spinning would slow.
    """

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True):
        self.path = Path(path)
        weights = self.path.with_suffix(".bin")
        if self.path.suffix.lower() == OPENVINO_SUFFIX and not weights.is_file():
            raise FileNotFoundError(f"OpenVINO model {self.path} has no weights file {weights.name} beside it: an "
                                    "OpenVINO IR is the .xml and the .bin that export writes together")
        self.metadata = read_metadata(self.path)
        self.threads = threads
        if self.path.suffix.lower() == COREML_SUFFIX:
            raise ValueError(f"{self.path} is a Core ML package: Core ML runs on Apple devices only (macOS, iOS), "
                             "not here; its export checked its spec. Score the model with its .tflite, .pte or .onnx "
                             "file, which export writes from the same checkpoint")
        if self.path.suffix.lower() == PTE_SUFFIX:
            program = _executorch_program(self.path)  # the one read_metadata loaded
            with executorch_log_filtered():
                if threads:
                    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

                    _unsafe_reset_threadpool(threads)
                method = program.load_method("forward")
            self._method = lambda image: method.execute([image])
            self._outputs = list(self.metadata["outputs"])
            self.runtime = f"executorch {_version('executorch')} (XNNPACK)"
        elif self.path.suffix.lower() == TFLITE_SUFFIX:
            from ai_edge_litert.interpreter import Interpreter

            runner = Interpreter(model_path=str(self.path), num_threads=threads).get_signature_runner()
            (name,) = runner.get_input_details()
            self._method = lambda image: self._from_tflite(runner(**{name: image.permute(0, 2, 3, 1).numpy()}))
            self._outputs = list(self.metadata["outputs"])
            self.runtime = f"ai-edge-litert {_version('ai-edge-litert')} (LiteRT interpreter, XNNPACK)"
        elif self.path.suffix.lower() == ONNX_SUFFIX:
            import onnxruntime

            options = onnxruntime.SessionOptions()
            if threads:
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
            if not spinning:
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self._session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            self._outputs = [o.name for o in self._session.get_outputs()]
            self.runtime = f"onnxruntime {onnxruntime.__version__} (CPUExecutionProvider)"
        else:
            # OpenVINO computes in bfloat16 by default on CPUs that have it (AVX512-BF16, AMX): a float file
            # would then not give its float outputs (tested)
            config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
            self._compiled = openvino_core().compile_model(str(self.path), "CPU", config)
            self._openvino_config = config
            self._static: dict[tuple[int, ...], Any] = {}  # input shape -> the file compiled for it alone
            self._shape_calls: collections.Counter[tuple[int, ...]] = collections.Counter()
            self._outputs = [o.get_any_name() for o in self._compiled.outputs]
            self.runtime = f"openvino {_version('openvino')} (CPU)"

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.shape[0] == 0:
            raise ValueError(f"{self.path.name} takes a batch of at least one image, got an empty one "
                             f"{tuple(images.shape)}")
        if hasattr(self, "_method"):
            per_image = [self._run_fixed(image) for image in images.detach().cpu()]
            return {name: torch.cat([out[name] for out in per_image]) for name in self._outputs}
        array = images.detach().cpu().numpy()
        if hasattr(self, "_session"):
            values = self._session.run(self._outputs, {"images": array})
        else:
            compiled = self._openvino_for(array.shape)
            result = compiled(array)
            values = [result[output] for output in compiled.outputs]
        return {name: torch.from_numpy(np.asarray(value)) for name, value in zip(self._outputs, values)}

    def _openvino_for(self, shape: tuple[int, ...]):
        """The compiled file for a batch of ``shape``: the file as it is (any size it allows) until that shape has come
        :data:`OPENVINO_STATIC_AFTER` times, then the file compiled for that shape alone, for up to
        :data:`OPENVINO_STATIC_SHAPES` shapes (a camera's, a benchmark's batches).

        OpenVINO works out every node's shape and memory at each call of a model whose input size is open, and once
        at compile time when it is fixed: the demo detector (SSDLite320, 480x640 images) runs in 7.3 rather than
        8.9 ms (2 threads, AMD EPYC), and its outputs agree to 4e-6. Compiling takes about half a second, paid once
        per shape, never for an evaluation's occasional sizes."""
        if shape in self._static:
            return self._static[shape]
        self._shape_calls[shape] += 1
        if (self._shape_calls[shape] < OPENVINO_STATIC_AFTER or len(self._static) >= OPENVINO_STATIC_SHAPES
                or self._compiled.inputs[0].get_partial_shape().is_static):
            return self._compiled
        model = openvino_core().read_model(str(self.path))
        model.reshape(list(shape))
        self._static[shape] = openvino_core().compile_model(model, "CPU", self._openvino_config)
        return self._static[shape]

    def _from_tflite(self, result: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """A ``.tflite`` file's outputs (``output_0``, ``output_1``, ... in order) as the network's."""
        values = [torch.from_numpy(result[key]) for key in sorted(result, key=lambda k: int(k.rsplit("_", 1)[-1]))]
        if "boxes" not in self._outputs:  # not a detector's four outputs (also: a benchmark's network alone)
            return [value.long() if not value.is_floating_point() else value for value in values]
        boxes, classes, scores, count = values
        height, width = self.metadata["fixed_input_size"]
        y0, x0, y1, x1 = boxes.unbind(-1)
        count = count.long()
        filled = torch.arange(classes.shape[1]) < count[:, None]
        return [torch.stack([x0 * width, y0 * height, x1 * width, y1 * height], -1), scores,
                torch.where(filled, classes.long() + 1, 0), count]

    def _run_fixed(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """One ``(3, h, w)`` image through a file of one input size, outputs in the image's pixels."""
        size = self.metadata["fixed_input_size"]
        values = self._method(fit_image(image, size)[None].contiguous())
        out = dict(zip(self._outputs, values))
        height, width = image.shape[-2:]
        scale = (width / size[1], height / size[0])
        if "boxes" in out and scale != (1.0, 1.0):
            out["boxes"] = out["boxes"] * torch.tensor([scale[0], scale[1], scale[0], scale[1]])
        if "labels" in out and out["labels"].dim() == 3 and tuple(out["labels"].shape[-2:]) != (height, width):
            resized = F.interpolate(out["labels"][:, None].float(), size=(height, width), mode="nearest-exact")
            out["labels"] = resized[:, 0].to(out["labels"].dtype)
        if "keypoints" in out and scale != (1.0, 1.0):  # pixel centres at integers
            shift = torch.tensor([0.5, 0.5, 0.0])
            out["keypoints"] = (out["keypoints"] + shift) * torch.tensor([scale[0], scale[1], 1.0]) - shift
        return out

    def __repr__(self) -> str:
        return f"ExportedModel({str(self.path)!r}, {self.runtime})"


def load_exported(path: str | Path, task: str | None = None, threads: int | None = None) -> ExportedModel:
    """An exported model, checked to be for ``task`` (``detect``, ``segment``, ``pose``) when given."""
    model = ExportedModel(path, threads)
    if task is not None and model.metadata.get("task") != task:
        raise ValueError(f"exported model {str(path)!r} is a {model.metadata.get('task')!r} model, not {task!r}")
    return model


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "unknown"
