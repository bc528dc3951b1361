"""Detection metrics: equal to pycocotools' COCOeval, and the VOC APs on a hand-worked example."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.evaluation.coco import COCO_DETECTION_KEYS, coco_detection_metrics
from tasks.evaluation.voc import voc_ap, voc_detection_metrics


def random_ground_truth(rng, images=30, category_ids=(1, 3, 7)):
    """A COCO ground truth with category gaps, crowd regions, empty images and every object size."""
    anns = []
    for image_id in range(1, images + 1):
        for _ in range(rng.integers(0, 6)):
            w, h = rng.uniform(5, 200, 2)
            x, y = rng.uniform(0, 400 - w), rng.uniform(0, 400 - h)
            anns.append({
                "id": len(anns) + 1, "image_id": image_id, "category_id": int(rng.choice(category_ids)),
                "bbox": [x, y, w, h], "area": w * h * rng.uniform(0.5, 1.0), "iscrowd": int(rng.random() < 0.05),
            })
    return {
        "images": [{"id": i, "width": 400, "height": 400, "file_name": f"{i}.jpg"} for i in range(1, images + 1)],
        "annotations": anns,
        "categories": [{"id": c, "name": f"class{c}"} for c in category_ids],
    }


def random_detections(rng, gt):
    """Noisy copies of the ground truth plus false positives, with random scores."""
    dets = []
    for ann in gt["annotations"]:
        if rng.random() < 0.8:
            x, y, w, h = np.asarray(ann["bbox"]) + rng.normal(0, 0.08 * np.sqrt(ann["bbox"][2] * ann["bbox"][3]), 4)
            dets.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                         "bbox": [x, y, abs(w) + 1, abs(h) + 1], "score": float(rng.random())})
    for _ in range(60):
        w, h = rng.uniform(5, 150, 2)
        dets.append({"image_id": int(rng.integers(1, len(gt["images"]) + 1)),
                     "category_id": int(rng.choice([c["id"] for c in gt["categories"]])),
                     "bbox": [float(rng.uniform(0, 250)), float(rng.uniform(0, 250)), w, h],
                     "score": float(rng.random() * 0.6)})
    return dets


def pycocotools_eval(gt, dets):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_metrics_equal_pycocotools(seed):
    rng = np.random.default_rng(seed)
    gt = random_ground_truth(rng)
    dets = random_detections(rng, gt)
    reference = pycocotools_eval(gt, [dict(d) for d in dets])
    ours = coco_detection_metrics(gt, [dict(d) for d in dets], ["class1", "class3", "class7"])
    for key, index in COCO_DETECTION_KEYS.items():
        expected = reference.stats[index]
        if expected < 0:
            assert ours[key] is None, key
        else:
            assert ours[key] == pytest.approx(expected, abs=1e-12), key
    precision = reference.eval["precision"]
    for k, name in enumerate(["class1", "class3", "class7"]):
        p = precision[:, :, k, 0, -1]
        assert ours["per_class"][name]["ap"] == pytest.approx(p[p > -1].mean(), abs=1e-12)
        p50 = precision[0, :, k, 0, -1]
        assert ours["per_class"][name]["ap_50"] == pytest.approx(p50[p50 > -1].mean(), abs=1e-12)


def test_coco_metrics_without_detections_or_small_objects():
    gt = {
        "images": [{"id": 1, "width": 100, "height": 100}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 60, 60], "area": 3600,
                         "iscrowd": 0}],
        "categories": [{"id": 2, "name": "a"}, {"id": 5, "name": "b"}],
    }
    assert coco_detection_metrics(gt, [], ["a", "b"])["map"] == 0.0
    perfect = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 60, 60], "score": 0.9}]
    metrics = coco_detection_metrics(gt, perfect, ["a", "b"])
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["map_small"] is None  # no small objects: undefined, not 0
    assert metrics["per_class"]["b"] == {"ap": None, "ap_50": None}


@pytest.mark.parametrize("seed", [0, 1])
def test_no_detections_is_what_cocoeval_gives_for_detections_that_find_nothing(seed):
    """0 where there is ground truth to miss, None (undefined) where there is none of that size or class:
    pycocotools' numbers for one detection that overlaps nothing (it cannot load an empty list)."""
    rng = np.random.default_rng(seed)
    gt = random_ground_truth(rng, images=4, category_ids=(1, 3, 7, 9))
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 9 and a["area"] > 32**2]  # no small
    names = ["class1", "class3", "class7", "class9"]
    nowhere = [{"image_id": 1, "category_id": 1, "bbox": [-500.0, -500.0, 1.0, 1.0], "score": 0.01}]
    reference = pycocotools_eval(gt, nowhere)
    ours = coco_detection_metrics(gt, [], names)
    for key, index in COCO_DETECTION_KEYS.items():
        assert ours[key] == (None if reference.stats[index] < 0 else pytest.approx(reference.stats[index])), key
    assert ours["map_small"] is None and ours["map"] == 0.0
    precision = reference.eval["precision"]
    for k, name in enumerate(names):
        defined = (precision[:, :, k, 0, -1] > -1).any()
        assert ours["per_class"][name] == ({"ap": 0.0, "ap_50": 0.0} if defined else {"ap": None, "ap_50": None})
    assert ours["per_class"]["class9"] == {"ap": None, "ap_50": None}


def test_voc_ap_definitions():
    recall = np.array([0.5, 1.0])
    precision = np.array([1.0, 0.5])
    # VOC07: recall >= 0..0.5 (6 points) has precision 1, 0.6..1.0 (5 points) has 0.5
    assert voc_ap(recall, precision, use_07_metric=True) == pytest.approx((6 * 1.0 + 5 * 0.5) / 11)
    # area: 0.5 * 1 + 0.5 * 0.5
    assert voc_ap(recall, precision, use_07_metric=False) == pytest.approx(0.75)


def test_voc_metrics_hand_worked():
    """Class "a": objects A (image 0), a difficult one (image 0) and A' (image 1); four detections.

    By score: 0.9 hits A (TP), 0.8 hits the difficult object (ignored), 0.7 duplicates A (FP), 0.5
    hits A' (TP). Two positives; (precision, recall) after each TP/FP: (1, 1/2), (1/2, 1/2), (2/3, 1).
    VOC07: recall >= 0..0.5 -> max precision 1 (6 points); 0.6..1.0 -> 2/3 (5 points).
    VOC12: envelope precision 1 on [0, 0.5], 2/3 on (0.5, 1] -> 0.5 + 0.5 * 2/3.
    Class "b": one object, missed by its only detection (AP 0). mAP is the mean of the two classes.
    """
    gt = {
        0: (np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float), np.array([1, 1, 2]),
            np.array([False, True, False])),
        1: (np.array([[0, 0, 10, 10]], float), np.array([1]), np.array([False])),
    }
    dets = {
        0: (np.array([[0, 0, 10, 10], [20, 20, 30, 31], [0, 0, 10, 11], [70, 70, 80, 80]], float),
            np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 1, 1, 2])),
        1: (np.array([[0, 0, 10, 10]], float), np.array([0.5]), np.array([1])),
    }
    result = voc_detection_metrics(gt, dets, ["a", "b"])
    assert result["per_class"]["a"]["voc07_ap_50"] == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert result["per_class"]["a"]["voc12_ap_50"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert result["per_class"]["b"]["voc07_ap_50"] == 0.0
    assert result["voc07_map_50"] == pytest.approx((6 + 5 * 2 / 3) / 11 / 2)
    assert result["voc12_map_50"] == pytest.approx((0.5 + 0.5 * 2 / 3) / 2)
