"""The evaluators without a Trainer: each task's numbers from outputs fed batch by batch, equal to pycocotools'
COCOeval (detection), in two gloo processes equal to one, and built by the data module that owns the ground truth."""

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_detection_metrics import pycocotools_eval

from tasks.data.detection import DetectionData
from tasks.data.pose import PoseData
from tasks.data.segmentation import SegmentationData
from tasks.data.synthetic import VOC_SYNTHETIC_CLASSES

TASKS = ("detect", "segment", "pose")


def data_module(task: str, shapes: Path):
    if task == "detect":
        return DetectionData(str(shapes / "coco"), image_size=64, batch_size=3, num_workers=0)
    if task == "segment":
        return SegmentationData(str(shapes / "voc"), classes=VOC_SYNTHETIC_CLASSES, batch_size=3, num_workers=0)
    return PoseData(str(shapes / "coco"), image_size=(64, 48), batch_size=3, num_workers=0)


def outputs(task: str, targets: list[dict]) -> list[dict]:
    """What a network might answer: the ground truth, shifted, with wrong classes and extras, by a generator seeded
    by the image (and person box) it answers for: the same answer whichever process asks."""
    found = []
    for target in targets:
        rng = np.random.default_rng(zlib.crc32(f"{target['image_id']} {target.get('instance')}".encode()))
        if task == "detect":
            boxes = target["boxes"].numpy() + rng.normal(0, 3, target["boxes"].shape)
            labels = np.where(rng.random(len(boxes)) < 0.8, target["labels"].numpy(), 1)
            extra = rng.uniform(0, 60, (3, 2))
            boxes = np.concatenate([boxes, np.concatenate([extra, extra + rng.uniform(5, 40, (3, 2))], 1)])
            labels = np.concatenate([labels, rng.integers(1, 5, 3)])
            found.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                          "scores": torch.tensor(rng.uniform(0.05, 1, len(boxes)), dtype=torch.float32)})
        elif task == "segment":
            labels = target["mask"].clone()
            labels[labels == 255] = 0
            flip = torch.from_numpy(rng.random(labels.shape) < 0.2)
            labels[flip] = torch.from_numpy(rng.integers(0, 5, labels.shape))[flip]
            found.append({"labels": labels})
        else:
            keypoints = target["keypoints"].clone()
            keypoints[:, :2] += torch.from_numpy(rng.normal(0, 1.5, (len(keypoints), 2))).float()
            keypoints[:, 2] = torch.from_numpy(rng.uniform(0, 1, len(keypoints))).float()
            found.append({"keypoints": keypoints})
    return found


def evaluate_split(task: str, shapes: Path) -> tuple[dict, object]:
    """The evaluator of the validation split fed every batch of its loader (each process: its share)."""
    data = data_module(task, shapes)
    data.setup("validate")
    evaluator = data.evaluator("val")
    for _, targets in data.val_dataloader():
        evaluator.update(outputs(task, targets), targets)
    return evaluator.compute(), evaluator


def flat(metrics: dict, prefix: str = "") -> dict:
    """``{"per_class": {"circle": {"ap": x}}}`` as ``{"per_class circle ap": x}``."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key} "))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _worker(rank: int, shapes: str, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        found = {task: evaluate_split(task, Path(shapes))[0] for task in TASKS}
        if rank == 0:
            Path(out).write_text(json.dumps(found))
    finally:
        dist.destroy_process_group()


def test_two_processes_give_one_processs_numbers(shapes, tmp_path):
    """Each process scores its share of the split (the loader repeats no image); the gathered numbers are exactly a
    single process's, for every task."""
    out = tmp_path / "metrics.json"
    mp.start_processes(_worker, args=(str(shapes), str(tmp_path / "store"), str(out)), nprocs=2, start_method="spawn")
    found = json.loads(out.read_text())
    for task, main in (("detect", "map"), ("segment", "miou"), ("pose", "ap")):
        single, _ = evaluate_split(task, shapes)
        assert flat(found[task]) == pytest.approx(flat(single), abs=1e-12), task
        assert 0.05 < single[main] < 0.99, f"{task}: degenerate comparison"


def test_detection_evaluator_equals_pycocotools(shapes):
    """The evaluator's numbers are COCOeval's on the annotation file, for the detections it was given."""
    metrics, evaluator = evaluate_split("detect", shapes)
    ground_truth = json.loads((shapes / "coco" / "annotations" / "instances_val2017.json").read_text())
    category_ids = evaluator.category_ids
    results = [{"image_id": evaluator.images[position].eval_id, "category_id": category_ids[int(label) - 1],
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(score)}
               for position, (boxes, scores, labels) in evaluator.detections().items()
               for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels)]
    reference = pycocotools_eval(ground_truth, results)
    for key, value in zip(["map", "map_50", "map_75", "map_small", "map_medium", "map_large"], reference.stats):
        assert metrics[key] == (None if value < 0 else pytest.approx(value, abs=1e-12)), key
    report = evaluator.report()
    assert report.headline[0] == "map" and report.precision is not None and len(report.samples) == 4
    assert set(report.table) == set(evaluator.class_names)


def test_an_image_evaluated_twice_is_an_error(shapes):
    """A sampler that repeats images (DistributedSampler's padding) would count them twice: refused, not averaged."""
    data = data_module("detect", shapes)
    data.setup("validate")
    evaluator = data.evaluator("val")
    _, targets = next(iter(data.val_dataloader()))
    evaluator.update(outputs("detect", targets), targets)
    evaluator.update(outputs("detect", targets[:1]), targets[:1])
    with pytest.raises(ValueError, match="evaluated more than once"):
        evaluator.compute()
    with pytest.raises(ValueError, match="image id 'nope' is not in the ground truth"):
        evaluator.update(outputs("detect", targets[:1]), [{**targets[0], "image_id": "nope"}])
