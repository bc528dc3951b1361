"""Pose pieces: heatmap codec, flip pairs, affine crops, OKS metrics against pycocotools, data errors."""

import copy
import json
import logging

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sweep import backbones

from backbones import Backbone, build_backbone
from heads.pose import SimpleBaseline, decode_heatmaps, flip_index, from_heatmap, gaussian_heatmaps, to_heatmap
from tasks.data.pose import (
    COCO_KEYPOINTS,
    COCO_SIGMAS,
    PoseAugment,
    PoseData,
    PoseDataset,
    apply_affine,
    coco_pose_split,
    crop_matrix,
)
from tasks.evaluation.keypoints import coco_keypoint_metrics, oks_nms
from tasks.pose import PoseTask


@pytest.fixture(scope="module")
def coco_root(shapes):
    return shapes / "coco"


@pytest.mark.parametrize("blur_kernel", [11, None])
def test_a_heatmap_decodes_back_to_its_sub_pixel_point(blur_kernel):
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(50, 2, generator=generator) * torch.tensor([48 - 12, 64 - 12]) + 6  # away from the border
    heatmaps, weights = gaussian_heatmaps(points, torch.ones(50), (64, 48), sigma=2.0)
    assert weights.eq(1).all() and heatmaps.amax((-2, -1)).gt(0.9).all()
    coords, scores = decode_heatmaps(heatmaps[None], blur_kernel)
    assert (coords[0] - points).abs().max() < 0.1
    assert torch.allclose(scores[0], heatmaps.amax((-2, -1)))
    # the integer argmax alone is up to half a pixel off: the refinement does the work
    assert (coords[0] - points).abs().max() < 0.5 * (coords[0].round() - points).abs().max()


@pytest.mark.parametrize("blur_kernel", [11, None])
def test_peaks_near_the_border_decode_without_a_pull(blur_kernel):
    """One to five pixels from an edge, where smoothing with any padding would drag the peak."""
    points = torch.tensor([[1.2, 30.0], [2.2, 9.6], [3.5, 40.3], [45.8, 20.0], [24.0, 1.7], [17.3, 61.2]])
    heatmaps, _ = gaussian_heatmaps(points, torch.ones(6), (64, 48), sigma=2.0)
    coords, _ = decode_heatmaps(heatmaps[None], blur_kernel)
    assert (coords[0] - points).abs().max() < 0.1


def test_targets_of_unlabelled_or_outside_keypoints_weigh_nothing():
    points = torch.tensor([[5.0, 5.0], [5.0, 5.0], [60.0, 5.0], [-3.0, 2.0]])
    heatmaps, weights = gaussian_heatmaps(points, torch.tensor([1, 0, 1, 1]), (16, 12))
    assert weights.tolist() == [1, 0, 0, 0]
    assert heatmaps[1:].abs().sum() == 0


def test_flip_pairs_come_from_left_right_names():
    index = flip_index(COCO_KEYPOINTS)
    for i, name in enumerate(COCO_KEYPOINTS):
        assert COCO_KEYPOINTS[index[i]] == name.replace("left", "@").replace("right", "left").replace("@", "right")
    assert flip_index(["head", "hand_left", "hand_right", "tail"]) == [0, 2, 1, 3]
    with pytest.raises(ValueError, match="'left_paw' has no mirror keypoint 'right_paw'"):
        flip_index(["nose", "left_paw"])


def test_flipping_the_input_flips_the_heatmap_exactly():
    """Crop width 96, heatmap stride 4: x in the crop and W - 1 - x decode to mirrored heatmap points."""
    x = torch.tensor([[37.3, 40.6], [60.2, 52.9]])  # away from the border, where smoothing bends peaks
    mirrored = torch.stack([96 - 1 - x[:, 0], x[:, 1]], 1)
    heatmaps, _ = gaussian_heatmaps(to_heatmap(x, 4), torch.ones(2), (32, 24))
    coords, _ = decode_heatmaps(heatmaps.flip(-1)[None])
    assert torch.allclose(from_heatmap(coords[0], 4), mirrored, atol=0.05)


@pytest.mark.parametrize("rotation,flip", [(0.0, False), (30.0, False), (-25.0, True)])
def test_crop_matrix_moves_keypoints_with_the_pixels(rotation, flip):
    image = np.zeros((300, 400, 3), np.uint8)
    point = np.array([231.0, 118.0])
    image[118, 231] = 255
    matrix = crop_matrix(np.array([220.0, 140.0]), np.array([120.0, 160.0]), (128, 96), rotation, flip)
    crop = cv2.warpAffine(image, matrix, (96, 128), flags=cv2.INTER_LINEAR)
    y, x = np.unravel_index(crop[..., 0].argmax(), crop.shape[:2])
    assert np.abs(apply_affine(matrix, point) - (x, y)).max() <= 1.0
    assert np.allclose(apply_affine(matrix, np.array([220.0, 140.0])), (47.5, 63.5))


def test_a_flipped_crop_swaps_left_and_right(coco_root):
    split = coco_pose_split(coco_root, "val2017", None, train=True)
    names = split.keypoint_names
    pairs = flip_index(names)
    plain = PoseDataset(split, (128, 96), None, pairs)
    flipped = PoseDataset(split, (128, 96), PoseAugment(scale=(1, 1), rotation_prob=0, shift_prob=0, flip_prob=1),
                          pairs)
    (image, target), (image_f, target_f) = plain[0], flipped[0]
    keypoints, keypoints_f = target["keypoints"], target_f["keypoints"]
    assert torch.equal(image_f, image.flip(-1))
    left, right = names.index("left_wrist"), names.index("right_wrist")
    assert float(keypoints_f[left, 0]) == pytest.approx(96 - 1 - float(keypoints[right, 0]), abs=1e-3)
    assert float(keypoints_f[left, 1]) == pytest.approx(float(keypoints[right, 1]), abs=1e-3)
    # frontal figures: the person's left wrist is on the image's right, before and after the flip
    if keypoints[left, 2] and keypoints[right, 2]:
        assert keypoints[left, 0] > keypoints[right, 0] and keypoints_f[left, 0] > keypoints_f[right, 0]


def test_ground_truth_heatmaps_score_ap_1(coco_root):
    """Codec, crop and the evaluator's map back to image coordinates, end to end and without a Trainer: perfect
    heatmaps give AP 1, every labelled keypoint is found, and the report shows the split's people."""
    data = PoseData(str(coco_root), image_size=(128, 96), num_workers=0)
    data.setup("validate")
    evaluator = data.evaluator("val", **PoseTask(Backbone("mobilenet_v3_small", levels=[32]),
                                                 data.keypoint_names).evaluator_options())
    dataset = data.dataset(data.split("val"), train=False)
    for index in range(len(dataset)):
        _, target = dataset[index]
        heatmaps, _ = gaussian_heatmaps(to_heatmap(target["keypoints"][:, :2], 4), torch.ones(17), (32, 24))
        coords, scores = decode_heatmaps(heatmaps[None])
        keypoints = torch.cat([from_heatmap(coords[0], 4), scores[0][:, None]], 1)
        evaluator.update([{"keypoints": keypoints}], [target])
    metrics = evaluator.compute()
    assert len(dataset) > 3 and metrics["ap"] == pytest.approx(1.0) and metrics["ar"] == pytest.approx(1.0)
    report = evaluator.report()
    assert all(row["accuracy"] in (1.0, None) for row in report.table.values())
    assert report.counts["person boxes"] == len(dataset) and len(report.samples) == 4


def _pycocotools_stats(gt: dict, results: list[dict], sigmas) -> np.ndarray:
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "keypoints")
    evaluator.params.kpt_oks_sigmas = np.asarray(sigmas)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize("sigmas", [COCO_SIGMAS, [0.05] * 17])
def test_oks_ap_equals_pycocotools(coco_root, sigmas):
    gt = json.loads((coco_root / "annotations" / "person_keypoints_val2017.json").read_text())
    rng = np.random.default_rng(0)
    results = []
    for ann in gt["annotations"]:
        for _ in range(2):  # a good and a worse guess per person, plus noise-level scores
            kps = np.asarray(ann["keypoints"], float).reshape(-1, 3)
            kps[:, :2] += rng.normal(0, rng.uniform(1, 25), (17, 2))
            kps[:, 2] = rng.uniform(0.1, 1, 17)
            results.append({"image_id": ann["image_id"], "category_id": 1, "keypoints": kps.ravel().tolist(),
                            "score": float(rng.uniform())})
    metrics = coco_keypoint_metrics(gt, results, sigmas, category_id=1)
    stats = _pycocotools_stats(gt, results, sigmas)
    keys = ["ap", "ap_50", "ap_75", "ap_medium", "ap_large", "ar", "ar_50", "ar_75", "ar_medium", "ar_large"]
    for key, value in zip(keys, stats):
        expected = None if value < 0 else value
        assert metrics[key] == pytest.approx(expected, abs=1e-12), key
    assert 0.05 < metrics["ap"] < 0.95


def test_no_keypoint_results_is_what_cocoeval_gives_for_results_that_find_nothing(coco_root):
    gt = json.loads((coco_root / "annotations" / "person_keypoints_val2017.json").read_text())
    gt["annotations"] = [a for a in gt["annotations"] if a["area"] > 96**2 or a["num_keypoints"] == 0]  # no medium
    nowhere = [{"image_id": gt["images"][0]["id"], "category_id": 1, "keypoints": [-900.0, -900.0, 1.0] * 17,
                "score": 0.01}]
    stats = _pycocotools_stats(gt, nowhere, COCO_SIGMAS)
    metrics = coco_keypoint_metrics(gt, [], COCO_SIGMAS, category_id=1)
    keys = ["ap", "ap_50", "ap_75", "ap_medium", "ap_large", "ar", "ar_50", "ar_75", "ar_medium", "ar_large"]
    assert [metrics[k] for k in keys] == [None if v < 0 else pytest.approx(v) for v in stats]
    assert metrics["ap_medium"] is None and metrics["ap"] == 0.0


def test_oks_nms_drops_near_duplicates_and_keeps_the_best():
    base = np.random.default_rng(1).uniform(0, 100, (17, 2))
    poses = np.stack([base, base + 0.5, base + 40])
    keep = oks_nms(poses, np.array([0.5, 0.9, 0.7]), np.full(3, 100.0**2), COCO_SIGMAS, threshold=0.9)
    assert keep == [1, 2]
    assert oks_nms(poses, np.array([0.5, 0.9, 0.7]), np.full(3, 100.0**2), COCO_SIGMAS, threshold=1.0) == [1, 2, 0]


FIVE = ["nose", "left_eye", "right_eye", "left_ear", "right_ear"]


def crops(n: int, height: int, width: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, height, width), dtype=torch.uint8)


@pytest.mark.parametrize("name", backbones("timm:mobilenetv4_conv_small"))
def test_head_on_every_backbone(name):
    model = SimpleBaseline(build_backbone(name, levels=(32,)), FIVE)
    heatmaps = model.train()(crops(2, 128, 96))
    assert heatmaps.shape == (2, 5, 32, 24)
    heatmaps.mean().backward()
    with torch.no_grad():
        keypoints = model.eval()(crops(1, 128, 96))["keypoints"]
    assert keypoints.shape == (1, 5, 3) and keypoints[..., 0].max() < 96 and keypoints[..., 1].max() < 128


def test_the_network_decodes_its_heatmaps_to_crop_pixels():
    """Evaluation returns the DARK-decoded points of its heatmaps, in crop pixels, to 0.1 px."""
    model = SimpleBaseline(build_backbone("mobilenet_v3_small", levels=(32,)), FIVE, flip_test=False).eval()
    points = torch.tensor([[30.2, 40.7], [50.9, 61.3], [47.5, 60.1], [70.4, 100.8], [20.0, 88.2]])
    target, _ = gaussian_heatmaps(to_heatmap(points, 4), torch.ones(5), (32, 24))
    model.heatmaps = lambda x: target[None].expand(len(x), -1, -1, -1)
    with torch.no_grad():
        keypoints = model(crops(2, 128, 96))["keypoints"]
    assert (keypoints[..., :2] - points).abs().max() < 0.1
    assert torch.allclose(keypoints[..., 2], target.amax((-2, -1)).expand(2, -1))


def test_flip_test_averages_with_the_mirrored_crop_left_and_right_swapped():
    model = SimpleBaseline(build_backbone("mobilenet_v3_small", levels=(32,)), FIVE).eval()
    images = crops(3, 128, 96)
    with torch.no_grad():
        x = model.input(images)
        plain, mirrored = model.heatmaps(x), model.heatmaps(x.flip(-1)).flip(-1)[:, [0, 2, 1, 4, 3]]
        coords, scores = decode_heatmaps((plain + mirrored) / 2)
        keypoints = model(images)["keypoints"]
    torch.testing.assert_close(keypoints[..., :2], from_heatmap(coords, 4))
    torch.testing.assert_close(keypoints[..., 2], scores)


def test_head_on_a_dilated_backbone_and_its_errors():
    model = SimpleBaseline(build_backbone("mobilenet_v2", levels=(16,), output_stride=16), FIVE[:3], deconv_kernel=3)
    assert len([m for m in model.deconv if isinstance(m, torch.nn.ConvTranspose2d)]) == 2
    assert model.train()(crops(2, 64, 48)).shape == (2, 3, 16, 12)
    with pytest.raises(ValueError, match="must be a multiple of the backbone's stride 16"):
        model(crops(2, 60, 48))
    with pytest.raises(TypeError, match="takes uint8 RGB images"):
        model(torch.rand(2, 3, 64, 48))
    with pytest.raises(ValueError, match="stride 2 .*at least 4"):
        SimpleBaseline(build_backbone("mobilenet_v2", levels=(2,)), FIVE[:3])
    with pytest.raises(ValueError, match="'left_eye' has no mirror"):
        SimpleBaseline(build_backbone("mobilenet_v2", levels=(32,)), ["nose", "left_eye"])


# ----------------------------------------------------------------------------- bad input
def _write(coco_root, tmp_path, edit) -> str:
    data = json.loads((coco_root / "annotations" / "person_keypoints_val2017.json").read_text())
    edit(data)
    (tmp_path / "annotations").mkdir(exist_ok=True)
    (tmp_path / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(data))
    (tmp_path / "val2017").symlink_to(coco_root / "val2017")
    return tmp_path


def test_keypoint_arrays_of_the_wrong_length_name_the_annotation(coco_root, tmp_path):
    def edit(data):
        data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:-3]

    root = _write(coco_root, tmp_path, edit)
    with pytest.raises(ValueError, match=r"person_keypoints_val2017.json'.*annotation 1 has 48 keypoint values.*51"):
        coco_pose_split(root, "val2017", None, train=False)


def test_a_category_without_keypoints_is_an_error(coco_root, tmp_path):
    def edit(data):
        del data["categories"][0]["keypoints"]

    root = _write(coco_root, tmp_path, edit)
    with pytest.raises(ValueError, match="no category has a 'keypoints' list"):
        coco_pose_split(root, "val2017", None, train=False)


def test_boxes_outside_the_image_are_clipped_or_skipped(coco_root, tmp_path, caplog):
    def edit(data):
        size = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
        data["annotations"][0]["bbox"] = [size[data["annotations"][0]["image_id"]][0] + 5, 10, 30, 30]
        data["annotations"][1]["bbox"] = [-20, -20, 60, 60]

    root = _write(coco_root, tmp_path, edit)
    reference = coco_pose_split(coco_root, "val2017", None, train=False)
    with caplog.at_level(logging.WARNING):
        split = coco_pose_split(root, "val2017", None, train=False)
    assert "skipped 1 box(es) with no area inside their image" in caplog.text
    assert len(split.instances) == len(reference.instances) - 1
    assert split.instances[0].box.tolist() == [0, 0, 40, 40]


def test_detections_give_the_boxes(coco_root, tmp_path):
    gt = json.loads((coco_root / "annotations" / "person_keypoints_val2017.json").read_text())
    image_id = gt["annotations"][0]["image_id"]
    detections = [
        {"image_id": image_id, "category_id": 1, "bbox": [10, 20, 50, 90], "score": 0.8},
        {"image_id": image_id, "category_id": 1, "bbox": [10, 20, 50, 90], "score": 0.01},
        {"image_id": image_id, "category_id": 3, "bbox": [10, 20, 50, 90], "score": 0.9},
    ]
    det_file = tmp_path / "detections.json"
    det_file.write_text(json.dumps(detections))
    split = coco_pose_split(coco_root, "val2017", None, False, str(det_file), det_score_threshold=0.05)
    assert [(i.box.tolist(), i.score) for i in split.instances] == [([10, 20, 50, 90], 0.8)]
    det_file.write_text(json.dumps([{**detections[0], "image_id": 987654}]))
    with pytest.raises(ValueError, match="detections.json'.*entry 0 names image_id 987654"):
        coco_pose_split(coco_root, "val2017", None, False, str(det_file))


def test_data_module_sigmas_and_sizes(coco_root):
    data = PoseData(str(coco_root), image_size=96, num_workers=0)
    assert data.image_size == (96, 96) and data.sigmas == list(COCO_SIGMAS) and data.num_keypoints == 17
    assert PoseData(str(coco_root), sigmas=0.07).sigmas == [0.07] * 17
    with pytest.raises(ValueError, match="data.sigmas has 2 values for 17 keypoints"):
        PoseData(str(coco_root), sigmas=[0.1, 0.2])
    with pytest.raises(ValueError, match="must be 'coco' for pose"):
        PoseData(str(coco_root), format="voc")


def test_detections_without_a_person_are_an_error_naming_the_ids(coco_root, tmp_path):
    gt = json.loads((coco_root / "annotations" / "person_keypoints_val2017.json").read_text())
    det_file = tmp_path / "detections.json"
    det_file.write_text(json.dumps([{"image_id": gt["images"][0]["id"], "category_id": 3, "bbox": [1, 2, 30, 40],
                                     "score": 0.9}]))
    data = PoseData(str(coco_root), det_file=str(det_file))
    with pytest.raises(ValueError, match=r"no person boxes to use; .*detections.json has category ids \[3\], the "
                                         r"keypoint category is 1"):
        data.setup("validate")
