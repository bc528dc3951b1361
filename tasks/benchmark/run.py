"""``python -m tasks.benchmark``: Kestrel's networks, each in every runtime, beside torchvision's
reference models, measured in one run on this machine; see ``tasks.benchmark``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..cli import find_checkpoint
from ..deploy.agreement import budget
from ..deploy.export import split_images
from ..deploy.runtime import unbatch
from ..from_config import CONFIGS, config_path, config_task, data_from_config, read_config, task_class, task_from_config
from .accuracy import MAIN_METRICS, agreement_text, compare, score
from .machine import describe_machine, machine_line
from .report import pareto_plot, table, write_json, write_markdown
from .subjects import (
    NETWORK_RUNTIMES,
    PHONE_RUNTIMES,
    REFERENCES,
    RUNTIMES,
    Subject,
    available_runtimes,
    kestrel_subject,
    reference_subject,
    torchvision_weights,
)
from .timing import interleaved, summary, with_threads

DEMO_CONFIGS = [CONFIGS / "demo" / f"{name}.yaml" for name in
                ("ssdlite_mbv3_shapes", "ssdlite320_mbv3_shapes", "deeplabv3plus_mbv2_shapes", "pose_mbv2_shapes")]
COCO_CONFIGS = [CONFIGS / f"{name}.yaml" for name in
                ("ssdlite_mbv3", "ssdlite_mbv2", "ssdlite_mbv1", "ssdlite_mbv4s", "ssdlite_effb0",
                 "deeplabv3plus_mbv3_coco", "pose_mbv2_coco", "pose_mbv3_coco", "pose_effb0_coco")]
DEFAULT_CONFIGS = DEMO_CONFIGS + COCO_CONFIGS
# what a config's model is given when neither a checkpoint nor its data says: COCO's / VOC's classes
_PLACEHOLDER_CLASSES = {"coco": 80, "voc": 20}


def _checkpoint(config: Path, ckpt_path: str | None) -> tuple[Path | None, str | None]:
    """The checkpoint to measure for ``config`` (``best``/``last``: the newest under its runs), or None
    and why not."""
    if not ckpt_path:
        return None, None
    if ckpt_path not in ("best", "last"):
        return Path(ckpt_path), None
    root = read_config(config).get("trainer", {}).get("default_root_dir", "lightning_logs")
    try:
        return find_checkpoint(ckpt_path, root), None
    except FileNotFoundError:
        return None, f"{config.stem}: no {ckpt_path}.ckpt under {root}: untrained weights, no accuracy"


def _data(config: Path):
    """The config's data module with its validation split parsed, or None and why not."""
    try:
        data = data_from_config(config)
        data.setup("validate")
        return data, None
    except (FileNotFoundError, ValueError) as err:
        return None, f"{config.stem}: no data ({str(err).splitlines()[0]}): random images instead"


def _task(config: Path, checkpoint: Path | None, data) -> Any:
    task = config_task(config)
    if checkpoint is not None:
        return task_class(task).load_from_checkpoint(checkpoint, map_location="cpu")
    if data is not None:
        return task_from_config(config, data=data)
    section = read_config(config).get("data", {})
    placeholders: dict[str, Any] = {}
    if "image_size" in section:
        placeholders["image_size"] = section["image_size"]
    if task == "pose":
        from ..data.pose import COCO_KEYPOINTS

        placeholders["keypoint_names"] = list(COCO_KEYPOINTS)
    elif task == "segment" and section.get("coco_classes", "voc") == "all":
        placeholders["num_classes"] = _PLACEHOLDER_CLASSES["coco"]
    else:
        placeholders["num_classes"] = _PLACEHOLDER_CLASSES[section.get("format", "coco") if task == "detect" else "voc"]
    return task_from_config(config, **placeholders)


def _fit(images: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """uint8 images resized to one ``size`` and stacked."""
    resized = [F.interpolate(image[None].float(), size, mode="bilinear", align_corners=False)[0] for image in images]
    return torch.stack(resized).round().clamp(0, 255).to(torch.uint8)


def _batches(images: list[torch.Tensor], batches: list[int], size: tuple[int, int]) -> dict[int, torch.Tensor]:
    """The timing batches: the first ``b`` of ``images`` at ``size``, for each batch size ``b``."""
    stacked = _fit(images, size)
    return {b: stacked[:b].contiguous() for b in batches}


def _random_images(count: int, size: tuple[int, int], seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator) for _ in range(count)]


def _per_image(outputs: Any) -> list[dict[str, torch.Tensor]]:
    if isinstance(outputs, list):  # torchvision's detectors: one dict per image
        return [{k: v.detach() for k, v in o.items()} for o in outputs]
    return unbatch({k: torch.as_tensor(v) for k, v in outputs.items()})


def _time_group(subjects: list[Subject], inputs: dict[str, dict[int, torch.Tensor]], repeats: int,
                say: Callable[[str], None]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """Every form of ``subjects``, interleaved with each other; milliseconds by subject and runtime."""
    models, batches = {}, {}
    for subject in subjects:
        for runtime, form in subject.forms.items():
            key = f"{subject.name}\t{runtime}"
            models[key] = form.call
            batches[key] = {b: form.prepare(x) for b, x in inputs[subject.name].items() if b == 1 or not form.batch_one}
    samples = interleaved(models, batches, repeats, progress=lambda text: say(f"  timing: {text}"))
    result: dict[str, dict[str, dict[int, list[float]]]] = {}
    for key, by_batch in samples.items():
        name, runtime = key.split("\t")
        result.setdefault(name, {})[runtime] = by_batch
    return result


@with_threads
def run(configs: Sequence[str | Path] = DEFAULT_CONFIGS, ckpt_path: str | None = "best",
        runtimes: Sequence[str] = RUNTIMES, references: bool = True, batches: Sequence[int] = (1, 8),
        repeats: int = 10, threads: int = 2, input_hw: tuple[int, int] = (480, 640),
        calibration_images: int = 64, accuracy: bool = True, out: str | Path = "runs/benchmark",
        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure ``configs``' networks and torchvision's references; write ``benchmark.md``, ``.json``
    and ``pareto.png`` into ``out``. Returns what ``benchmark.json`` holds.

    Args:
        configs: Task configs (paths, or names in Kestrel's ``configs/``).
        ckpt_path: ``best`` / ``last`` (the newest under each config's ``trainer.default_root_dir``), a
            checkpoint path (one config), or None: untrained weights.
        runtimes: Forms to measure (``tasks.benchmark.subjects.RUNTIMES``).
        references: Measure torchvision's reference models of the tasks present.
        batches: Batch sizes to time.
        repeats: Timed calls per form and batch size.
        threads: Threads of PyTorch, ONNX Runtime and OpenVINO.
        input_hw: The images' size (detection and segmentation; pose takes crops at its input size).
        calibration_images: INT8 calibration images (training images when the config's data is there).
        accuracy: Score each form of a trained network with the task's evaluator, as ``test`` does (needs the
            data).
        out: The output folder.
        say: Where progress goes.
    """
    unknown = sorted(set(runtimes) - set(RUNTIMES))
    if unknown:
        raise ValueError(f"unknown runtime(s) {unknown}; choose from {list(RUNTIMES)}")
    configs = [config_path(c) for c in configs]
    if ckpt_path not in (None, "best", "last") and len(configs) != 1:
        raise ValueError("--ckpt_path PATH names one checkpoint: give exactly one config (or use best / last)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runtimes = available_runtimes(list(runtimes))
    batches = sorted(set(batches))
    machine = describe_machine(threads)
    say(f"Machine: {machine_line(machine)}")
    notes: list[str] = []
    if any(r.endswith("int8") for r in runtimes) and not machine["int8_instructions"]:
        notes.append("this CPU has no int8 dot-product instructions (VNNI/AMX): INT8 files are smaller here, "
                     "not faster")

    subjects: list[Subject] = []
    inputs: dict[str, dict[int, torch.Tensor]] = {}
    data_of: dict[str, Any] = {}
    for index, config in enumerate(configs):
        checkpoint, why = _checkpoint(config, ckpt_path)
        data, why_not = _data(config)
        notes += [n for n in (why, why_not) if n]
        say(f"[{index + 1}/{len(configs)}] {config.stem}: "
            f"{checkpoint or 'untrained'}, {'data ' + str(data.root) if data else 'random images'}")
        task = _task(config, checkpoint, data)
        crop = tuple(task.image_size) if task.task == "pose" else None
        size = crop or input_hw
        count = max(batches)
        images = split_images(data, "val", count) if data else _random_images(count, size, seed=index)
        inputs[config.stem] = _batches(images, batches, size)
        calibration = (split_images(data, "train", calibration_images) if data
                       else _random_images(calibration_images, size, seed=1000 + index))
        subject = kestrel_subject(config.stem, task, runtimes, size, out / "files" / config.stem,
                                  [c.numpy() for c in calibration], threads, config=config, checkpoint=checkpoint)
        subjects.append(subject)
        data_of[config.stem] = data
    if references:
        kestrel = list(subjects)
        for task_name in sorted({s.task for s in kestrel}):
            # a segmenter is compared at each Kestrel segmenter's input size; the detector at its own 320
            sizes = sorted({s.input_size for s in kestrel if s.task == task_name}) if task_name == "segment" else [None]
            for name, size in ((n, z) for n in REFERENCES.get(task_name, []) for z in sizes):
                weights = torchvision_weights(name, kestrel) if task_name == "detect" else None
                hw = size or input_hw
                label = name if size is None else reference_name(name, size)
                say(f"reference: torchvision's {label}" + (f" with {weights[0].name}'s weights" if weights else ""))
                images = _random_images(max(batches) + calibration_images, hw, seed=7)
                calibration = [c.numpy() for c in images[max(batches):]]
                subject = reference_subject(name, runtimes, hw, out / "files" / label.replace(" ", "_"), calibration,
                                            threads, weights)
                if size is not None:
                    subject.name = label
                notes += [n for n in subject.notes if n not in notes]
                subjects.append(subject)
                inputs[subject.name] = inputs[weights[0].name] if weights else _batches(images, batches, hw)

    milliseconds: dict[str, dict[str, dict[int, list[float]]]] = {}
    for task_name in ("detect", "segment", "pose"):
        group = [s for s in subjects if s.task == task_name]
        if group:
            say(f"timing {task_name}: {', '.join(s.name for s in group)} ({repeats} calls per form and batch size)")
            milliseconds.update(_time_group(group, inputs, repeats, say))

    outputs: dict[str, dict[str, list[dict]]] = {}  # each form's on the largest batch, to compare with eager's
    fitted: dict[str, list[dict]] = {}  # eager's on the images a phone file takes, fitted to its input size
    with torch.inference_mode():
        for subject in subjects:
            largest = inputs[subject.name][max(batches)]
            outputs[subject.name] = {runtime: _per_image(form.call(form.prepare(largest)))
                                     for runtime, form in subject.forms.items()
                                     if not (subject.reference and subject.task == "detect" and runtime != "eager")
                                     and runtime not in NETWORK_RUNTIMES}
            phone = next((form for runtime, form in subject.forms.items() if runtime in PHONE_RUNTIMES), None)
            if "eager" in subject.forms and phone is not None:  # the pixels the phone files are given
                fitted[subject.name] = _per_image(subject.forms["eager"].call(phone.prepare(largest)))
    rows = []
    for subject in subjects:
        scores = {}
        data = data_of.get(subject.name)
        if accuracy and data is not None and subject.checkpoint is not None:
            for runtime, form in subject.forms.items():
                if runtime == "torchvision" or runtime in NETWORK_RUNTIMES:
                    continue  # torchvision's pipeline takes float images (its agreement with eager says); a network
                    # alone gives no predictions
                say(f"scoring {subject.name} ({runtime}) with its evaluator")
                scores[runtime] = score(form.call, data, subject.evaluation)
        # a reference holding a Kestrel detector's weights is compared with that detector's eager outputs
        eager = outputs[subject.same_as or subject.name].get("eager")
        for runtime, form in subject.forms.items():
            stats = None
            mine = outputs[subject.name].get(runtime)
            if runtime in PHONE_RUNTIMES and subject.name in fitted:  # the same pixels; eager's first detections
                reference = budget(fitted[subject.name], mine)  # (the file's NMS visits a fixed budget)
                stats = compare(subject.task, reference, mine, runtime.endswith("int8"))
            elif eager is not None and mine is not None and (runtime != "eager" or subject.same_as):
                stats = compare(subject.task, eager, mine, runtime.endswith("int8"))
            metrics = scores.get(runtime)
            rows.append({
                "model": subject.name, "task": subject.task, "runtime": runtime, "reference": subject.reference,
                "backbone": subject.backbone, "head": subject.head, "input_size": list(subject.input_size),
                "params": subject.params, "gflops": subject.gflops, "size_mb": form.size_mb,
                "file": str(form.file) if form.file else None,
                "checkpoint": str(subject.checkpoint) if subject.checkpoint else None,
                "ms": {str(b): summary(t) for b, t in milliseconds[subject.name][runtime].items()},
                "samples": {str(b): t for b, t in milliseconds[subject.name][runtime].items()},
                "accuracy": {k: metrics.get(k) for k in MAIN_METRICS[subject.task]} if metrics else None,
                "agreement": agreement_text(subject.task, stats) if stats else None,
                "agreement_stats": stats,
            })
    _add_ratios(rows, batches)
    result = {"machine": machine, "batches": batches, "repeats": repeats, "input_hw": list(input_hw),
              "runtimes": runtimes, "notes": notes, "rows": rows}
    result["plot"] = "pareto.png" if pareto_plot(out / "pareto.png", rows) else None
    write_markdown(out / "benchmark.md", result)
    write_json(out / "benchmark.json", result)
    say("\n" + table(rows, batches) + "\n")
    for note in notes:
        say(f"note: {note}")
    plot = f", {out / 'pareto.png'}" if result["plot"] else ""
    say(f"Wrote {out / 'benchmark.md'}, {out / 'benchmark.json'}{plot}")
    return result


def reference_name(name: str, size: tuple[int, int]) -> str:
    """A reference segmenter's row name at one input size."""
    return f"{name} at {size[0]}x{size[1]}"


def _add_ratios(rows: list[dict], batches: list[int]) -> None:
    """Each row's latency over torchvision's: detection's pipeline on the same weights (else torchvision's
    SSDLite320), segmentation's deeplabv3_mobilenet_v3_large at the same input size; a reference over its
    own eager form. A float file's over its network alone in the same runtime, less one: its pipeline's cost."""
    def find(model: str, runtime: str) -> dict | None:
        return next((r for r in rows if r["model"] == model and r["runtime"] == runtime), None)

    for row in rows:
        if row["reference"]:
            base = find(row["model"], "eager")
        elif row["task"] == "detect":
            base = find(row["model"], "torchvision") or find(REFERENCES["detect"][0], "eager")
        elif row["task"] == "segment":
            base = find(reference_name(REFERENCES["segment"][0], tuple(row["input_size"])), "eager")
        else:
            base = None
        if base is not None:
            row["ratio"] = {str(b): row["ms"][str(b)]["median"] / base["ms"][str(b)]["median"]
                            for b in batches if str(b) in row["ms"] and str(b) in base["ms"]}
        alone = find(row["model"], f"network_{row['runtime']}")
        if alone is not None:  # what the pre- and post-processing inside the file cost over the network alone
            row["pipeline_cost"] = {str(b): row["ms"][str(b)]["median"] / alone["ms"][str(b)]["median"] - 1
                                    for b in batches if str(b) in row["ms"] and str(b) in alone["ms"]}
