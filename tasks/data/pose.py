"""Top-down keypoint data: COCO ``person_keypoints`` files, one sample per person box.

Training takes every non-crowd instance with at least one labelled keypoint. Evaluation runs on the
ground-truth boxes (every non-crowd instance) or, with ``data.det_file``, on the person detections of
a COCO results file (``python -m tasks.detect predict``'s ``detections.json``), so detection and pose
run as a pipeline. Each box is widened to the input's aspect ratio, padded 1.25x and cut out by an
affine warp; training adds random scale, rotation, shift and a horizontal flip that swaps left and
right keypoints.

Handled input: a keypoint array of the wrong length, a file without a category that lists
``keypoints``, detections naming unknown images are errors naming the file; boxes are clipped to the
image, and boxes with no area inside it are skipped with a logged count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from heads.pose import flip_index

from ..evaluation import PoseEvaluator
from ..evaluation.keypoints import apply_affine
from ._module import KestrelDataModule, check_size
from .coco import finite_number, load_coco, load_json, read_category_entries
from .images import read_image

log = logging.getLogger(__name__)

COCO_KEYPOINTS = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)
# COCO's per-keypoint OKS sigmas (pycocotools' defaults).
COCO_SIGMAS = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107,
    0.087, 0.087, 0.089, 0.089,
)
PADDING = 1.25


def resolve_sigmas(keypoint_names: list[str], sigmas: list[float] | float | None, source: str = "data.sigmas"
                   ) -> list[float]:
    """OKS sigmas per keypoint: given (a list, or one for all), COCO's for COCO's 17 keypoints, else 0.05."""
    k = len(keypoint_names)
    if sigmas is None:
        return list(COCO_SIGMAS) if tuple(keypoint_names) == COCO_KEYPOINTS else [0.05] * k
    if isinstance(sigmas, (int, float)):
        return [float(sigmas)] * k
    if len(sigmas) != k:
        raise ValueError(f"{source} has {len(sigmas)} values for {k} keypoints {list(keypoint_names)}")
    return [float(s) for s in sigmas]


@dataclass
class PoseInstance:
    """One person box to crop.

    Attributes:
        record: Index of its image in the split's ``images``.
        box: ``[x, y, width, height]`` in image pixels, clipped to the image.
        keypoints: ``(K, 3)`` ``x, y, visibility`` (zeros when unknown, e.g. a detection).
        score: The box's score (1 for ground truth).
        area: The ground truth's ``area`` (OKS's scale); the box's area for a detection.
    """

    record: int
    box: np.ndarray
    keypoints: np.ndarray
    score: float = 1.0
    area: float = 0.0


@dataclass
class PoseImage:
    file: Path
    image_id: int | str
    width: int | None = None
    height: int | None = None


@dataclass
class PoseSplit:
    """A split's images, person instances and what evaluating on it needs.

    Attributes:
        images: The images.
        instances: The boxes to estimate poses in.
        keypoint_names: Keypoint names in heatmap order.
        category_id: The keypoint category's id (results name it).
        coco_gt: The annotation file's content, for COCOeval; None for a folder of images.
        description: What the split is, for reports and errors.
        skeleton: The category's skeleton (1-based pairs), for drawing.
    """

    images: list[PoseImage]
    instances: list[PoseInstance]
    keypoint_names: list[str]
    category_id: int
    coco_gt: dict | None
    description: str
    skeleton: list[list[int]] | None = None

    @property
    def files(self) -> list[Path]:
        return [im.file for im in self.images]

    @property
    def vocabulary(self) -> tuple:
        return tuple(self.keypoint_names)


def _clip_box(box, width: int | None, height: int | None) -> np.ndarray | None:
    x, y, w, h = map(float, box)
    x1, y1, x2, y2 = x, y, x + w, y + h
    if width is not None and height is not None:
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        return None
    return np.array([x1, y1, x2 - x1, y2 - y1], np.float32)


def keypoint_category(coco_path: Path, categories: list[dict], name: str | None) -> dict:
    """The category whose ``keypoints`` the model learns (by ``name``, or the only one with keypoints)."""
    with_keypoints = [c for c in categories if isinstance(c.get("keypoints"), list) and c["keypoints"]]
    if name is not None:
        found = [c for c in with_keypoints if c["name"] == name]
        if not found:
            raise ValueError(f"annotation file {str(coco_path)!r} has no category {name!r} with a 'keypoints' list "
                             f"(categories with keypoints: {[c['name'] for c in with_keypoints]})")
        return found[0]
    if not with_keypoints:
        raise ValueError(f"annotation file {str(coco_path)!r}: no category has a 'keypoints' list; pose data "
                         "needs COCO person_keypoints files (categories naming their keypoints)")
    if len(with_keypoints) > 1:
        raise ValueError(f"annotation file {str(coco_path)!r} has several keypoint categories "
                         f"{[c['name'] for c in with_keypoints]}: choose one with data.category")
    return with_keypoints[0]


def coco_pose_split(root: str | Path, split: str, category: str | None, train: bool,
                    det_file: str | None = None, det_score_threshold: float = 0.0) -> PoseSplit:
    """``ROOT/annotations/person_keypoints_{split}.json``; boxes from the file or from ``det_file``."""
    root = Path(root)
    coco = load_coco(root / "annotations" / f"person_keypoints_{split}.json")
    cat = keypoint_category(coco.path, coco.data["categories"], category)
    names = list(cat["keypoints"])
    k = len(names)
    images = [PoseImage(root / split / im["file_name"], im["id"], im.get("width"), im.get("height"))
              for im in coco.images]
    position = {im["id"]: i for i, im in enumerate(coco.images)}
    instances: list[PoseInstance] = []
    skipped = 0
    for im in coco.images:
        for ann in coco.annotations[im["id"]]:
            if ann["category_id"] != cat["id"]:
                continue
            keypoints = ann.get("keypoints")
            if isinstance(keypoints, list) and len(keypoints) == 3 * k and not all(map(finite_number, keypoints)):
                raise ValueError(f"annotation file {str(coco.path)!r}: annotation {ann.get('id')!r} has keypoint "
                                 "values that are not finite numbers")
            if not isinstance(keypoints, list) or len(keypoints) != 3 * k:
                raise ValueError(
                    f"annotation file {str(coco.path)!r}: annotation {ann.get('id')!r} has "
                    f"{'no keypoints' if not isinstance(keypoints, list) else f'{len(keypoints)} keypoint values'}; "
                    f"category {cat['name']!r} has {k} keypoints, so 3 x {k} = {3 * k} values (x, y, visibility)"
                )
            if "num_keypoints" not in ann:  # COCOeval ignores people without visible keypoints by it
                ann["num_keypoints"] = int((np.asarray(keypoints[2::3]) > 0).sum())
            if ann.get("iscrowd", 0) or det_file is not None:
                continue
            kps = np.asarray(keypoints, np.float32).reshape(k, 3)
            if train and not (kps[:, 2] > 0).any():
                continue
            box = _clip_box(ann["bbox"], im.get("width"), im.get("height"))
            if box is None:
                skipped += 1
                continue
            area = float(ann.get("area") or box[2] * box[3])
            instances.append(PoseInstance(position[im["id"]], box, kps, area=area))
    if det_file is not None:
        instances, skipped = _detections(Path(det_file), cat["id"], coco.images, position, k, det_score_threshold)
    if skipped:
        log.warning("%s: skipped %d box(es) with no area inside their image", det_file or coco.path, skipped)
    source = f"{coco.path}" + (f" with person boxes from {det_file}" if det_file else " with ground-truth boxes")
    return PoseSplit(images, instances, names, cat["id"], coco.data, source, cat.get("skeleton"))


def _detections(path: Path, category_id: int, images: list[dict], position: dict, k: int,
                threshold: float) -> tuple[list[PoseInstance], int]:
    """The person boxes of a COCO results file (entries of other categories are left out)."""
    results = load_json(path)
    if not isinstance(results, list):
        raise ValueError(f"detections file {str(path)!r} must be a COCO results list, not {type(results).__name__}")
    instances, skipped = [], 0
    for i, det in enumerate(results):
        if not (isinstance(det, dict) and {"image_id", "bbox", "category_id"} <= det.keys()):
            raise ValueError(f"detections file {str(path)!r}: entry {i} is not a COCO detection "
                             "(image_id, category_id, bbox, score)")
        if det["category_id"] != category_id or det.get("score", 1.0) < threshold:
            continue
        if det["image_id"] not in position:
            raise ValueError(f"detections file {str(path)!r}: entry {i} names image_id {det['image_id']!r}, which "
                             "is not in the annotation file")
        im = images[position[det["image_id"]]]
        box = _clip_box(det["bbox"], im.get("width"), im.get("height"))
        if box is None:
            skipped += 1
            continue
        instances.append(PoseInstance(position[det["image_id"]], box, np.zeros((k, 3), np.float32),
                                      float(det.get("score", 1.0)), float(box[2] * box[3])))
    return instances, skipped


def folder_pose_split(folder: str | Path, files: list[Path], keypoint_names: list[str], category_id: int,
                      det_file: str | None, det_score_threshold: float) -> PoseSplit:
    """Images of a folder: person boxes from ``det_file`` (image ids = file names), or the whole image."""
    images = [PoseImage(f, f.name) for f in files]
    k = len(keypoint_names)
    if det_file is None:
        instances = []
        for i, f in enumerate(files):
            height, width = read_image(f).shape[:2]
            images[i].width, images[i].height = width, height
            instances.append(PoseInstance(i, np.array([0, 0, width, height], np.float32), np.zeros((k, 3), np.float32)))
        source = f"{folder} (each whole image as one person box)"
    else:
        position = {f.name: i for i, f in enumerate(files)}
        entries = [{"id": f.name, "file_name": f.name} for f in files]
        instances, _ = _detections(Path(det_file), category_id, entries, position, k, det_score_threshold)
        source = f"{folder} with person boxes from {det_file}"
    return PoseSplit(images, instances, list(keypoint_names), category_id, None, source)


# ----------------------------------------------------------------------------- the crop
def box_to_center_scale(box: np.ndarray, aspect: float, padding: float = PADDING) -> tuple[np.ndarray, np.ndarray]:
    """A box ``[x, y, w, h]`` widened to ``aspect`` (width / height) and padded: centre and size in pixels."""
    x, y, w, h = box
    center = np.array([x + w / 2 - 0.5, y + h / 2 - 0.5], np.float64)  # pixel-centre coordinates
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h], np.float64) * padding


def crop_matrix(center: np.ndarray, scale: np.ndarray, output: tuple[int, int], rotation: float = 0.0,
                flip: bool = False) -> np.ndarray:
    """The 2x3 affine map from image to crop pixels: ``center`` to the crop's centre, a ``scale``-sized
    region to the crop ``output`` = (height, width), rotated by ``rotation`` degrees (counter-clockwise),
    mirrored when ``flip``."""
    height, width = output
    s = width / scale[0]
    angle = math.radians(rotation)
    cos, sin = math.cos(angle) * s, math.sin(angle) * s
    linear = np.array([[cos, sin], [-sin, cos]])
    if flip:
        linear = np.array([[-1.0, 0.0], [0.0, 1.0]]) @ linear
    out_center = np.array([(width - 1) / 2, (height - 1) / 2])
    return np.concatenate([linear, (out_center - linear @ center)[:, None]], 1)


def cut_out(image: np.ndarray, matrix: np.ndarray, output: tuple[int, int]) -> np.ndarray:
    """The crop ``output`` = (height, width) that ``matrix`` (image -> crop) maps the image to; black outside."""
    height, width = output
    return cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    return cv2.invertAffineTransform(matrix)


@dataclass
class PoseAugment:
    """Random box changes of training crops: mmpose's ``RandomBBoxTransform`` and ``RandomFlip``, with
    its defaults (mmpose's ``RandomHalfBody`` is not implemented).

    Attributes:
        scale: Range of the box-size factor (a normal truncated to the range, as mmpose).
        rotation: Largest rotation in degrees (a normal truncated to [-1, 1] times this).
        rotation_prob: Probability of rotating.
        shift: Largest centre shift, as a fraction of the padded box size.
        shift_prob: Probability of shifting.
        flip_prob: Probability of a horizontal flip (left and right keypoints swapped).
    """

    scale: tuple[float, float] = (0.5, 1.5)
    rotation: float = 80.0
    rotation_prob: float = 0.6
    shift: float = 0.16
    shift_prob: float = 0.3
    flip_prob: float = 0.5


def _truncated_normal(rng: np.random.Generator) -> float:
    """A standard normal draw truncated to [-1, 1] (resampled, not clipped)."""
    while True:
        value = rng.normal()
        if -1.0 <= value <= 1.0:
            return float(value)


class PoseDataset(Dataset):
    """Affine crops of person boxes with their keypoints in crop pixels.

    Items are ``(image uint8 (3, H, W), target)``; the target holds ``keypoints`` float ``(K, 3)``: ``x, y,
    visibility`` in crop coordinates, visibility 0 for unlabelled ones and for any the crop loses; and
    what maps a prediction back: ``image_id``, ``file``, ``instance`` (the box's number in the split),
    ``category_id``, ``matrix`` (crop -> image, 2x3), ``box_score``, ``box_area`` (of the padded box, for OKS
    NMS), and the box's ground truth in image pixels, ``truth`` ``(K, 3)`` and ``area`` (zeros for a detection).
    """

    def __init__(self, split: PoseSplit, image_size: tuple[int, int], augment: PoseAugment | None,
                 flip_pairs: list[int] | None = None, seed: int | None = None):
        self.split = split
        self.image_size = image_size
        self.augment = augment
        self.flip_pairs = flip_pairs
        self.rng = np.random.default_rng(seed)

    def set_random_seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.split.instances)

    def __getitem__(self, index: int):
        instance = self.split.instances[index]
        record = self.split.images[instance.record]
        image = read_image(record.file)
        height, width = self.image_size
        center, scale = box_to_center_scale(instance.box, width / height)
        rotation, flip = 0.0, False
        a = self.augment
        if a is not None:
            rng = self.rng
            if rng.random() < a.shift_prob:
                center = center + rng.uniform(-a.shift, a.shift, 2) * scale
            low, high = a.scale
            scale = scale * ((high + low) / 2 + _truncated_normal(rng) * (high - low) / 2)
            if rng.random() < a.rotation_prob:
                rotation = _truncated_normal(rng) * a.rotation
            flip = rng.random() < a.flip_prob
        matrix = crop_matrix(center, scale, self.image_size, rotation, flip)
        crop = cut_out(image, matrix, self.image_size)
        keypoints = instance.keypoints.copy()
        keypoints[:, :2] = apply_affine(matrix, keypoints[:, :2])
        if flip:
            keypoints = keypoints[self.flip_pairs]
        outside = (keypoints[:, 0] < -0.5) | (keypoints[:, 0] > width - 0.5) | (keypoints[:, 1] < -0.5) | (
            keypoints[:, 1] > height - 0.5)
        keypoints[outside, 2] = 0
        target = {"keypoints": torch.from_numpy(keypoints), "image_id": record.image_id, "file": record.file,
                  "category_id": self.split.category_id, "instance": index, "matrix": invert_affine(matrix),
                  "box_score": instance.score, "box_area": float(scale[0] * scale[1]), "truth": instance.keypoints,
                  "area": instance.area}
        return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1), target


class PoseData(KestrelDataModule):
    """COCO keypoint data (person boxes cut out) for ``python -m tasks.pose``.

    Args:
        root: The data set's folder: ``annotations/person_keypoints_{split}.json``, images in ``{split}/``.
        format: ``"coco"`` (keypoints exist only in COCO's format).
        category: The keypoint category to learn; the only one with ``keypoints`` by default.
        train_split: ``train2017`` by default.
        val_split: ``val2017`` by default.
        test_split: The split ``test`` evaluates; ``val_split`` by default.
        det_file: A COCO results file of person detections to evaluate and predict on (e.g. from
            ``python -m tasks.detect predict``); ground-truth boxes if None.
        det_score_threshold: Detections scoring below this are left out.
        sigmas: OKS sigmas per keypoint (or one for all); COCO's for COCO's 17 keypoints, 0.05 otherwise.
        image_size: Input ``[height, width]`` (or one side for a square).
        augment: Random scale, rotation, shift and flip of training crops.
        batch_size: Crops per batch and device.
        num_workers: Loader processes per device.
        predict_dir: A folder of images for ``predict`` (boxes from ``det_file``, image ids its file
            names; else each whole image is one box); the validation split by default.
        pin_memory: Page-locked batches, for faster copies to a GPU.
        check_files: Check every image header and mask before the first step (sizes, decodable, mask
            modes and class indices): a bad file fails the run at once, not after an epoch.
    """

    def __init__(
        self,
        root: str,
        format: str = "coco",
        category: str | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        det_file: str | None = None,
        det_score_threshold: float = 0.0,
        sigmas: list[float] | float | None = None,
        image_size: int | tuple[int, int] = (256, 192),
        augment: PoseAugment | None = None,
        batch_size: int = 64,
        num_workers: int = 4,
        predict_dir: str | None = None,
        pin_memory: bool = True,
        check_files: bool = True,
    ):
        if format != "coco":
            raise ValueError(f"data.format must be 'coco' for pose (keypoints are COCO's format), got {format!r}")
        super().__init__(format, train_split, val_split, test_split, predict_dir, batch_size, num_workers, pin_memory,
                         check_files)
        self.root = root
        self.category = category
        self.det_file = det_file
        self.det_score_threshold = det_score_threshold
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.image_size = tuple(check_size(side, "data.image_size") for side in self.image_size)
        self.augment = augment if augment is not None else PoseAugment()
        # the keypoints decide the model's outputs, needed before setup
        path = Path(root) / "annotations" / f"person_keypoints_{self.val_split}.json"
        found = keypoint_category(path, read_category_entries(path), category)
        self.keypoint_names = list(found["keypoints"])
        self.category_id = found["id"]
        self.skeleton = found.get("skeleton")
        self.flip_pairs = flip_index(self.keypoint_names)
        self.sigmas = resolve_sigmas(self.keypoint_names, sigmas)

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    def load_split(self, stage: str, name: str) -> PoseSplit:
        det_file = None if stage == "train" else self.det_file
        split = coco_pose_split(self.root, name, self.category, stage == "train", det_file, self.det_score_threshold)
        return self._check_boxes(split, "train on" if stage == "train" else "use")

    def folder_split(self, files: list[Path]) -> PoseSplit:
        split = folder_pose_split(self.predict_dir, files, self.keypoint_names, self.category_id, self.det_file,
                                  self.det_score_threshold)
        return self._check_boxes(split, "use")

    def _check_boxes(self, split: PoseSplit, purpose: str) -> PoseSplit:
        if split.instances:
            return split
        found = ""
        if self.det_file and purpose == "use":
            results = load_json(self.det_file)
            ids = sorted({d.get("category_id") for d in results if isinstance(d, dict)}, key=str)
            found = f"; {self.det_file} has category ids {ids}, the keypoint category is {split.category_id}"
        raise ValueError(f"{split.description}: no person boxes to {purpose}{found}")

    def dataset(self, split: PoseSplit, train: bool) -> PoseDataset:
        return PoseDataset(split, self.image_size, self.augment if train else None, self.flip_pairs)

    def evaluator(self, stage: str, sigmas: list[float] | None = None, keypoint_score_threshold: float = 0.2,
                  nms_threshold: float | None = 0.9) -> PoseEvaluator:
        """COCO OKS AP against the split's keypoint annotations, with ``sigmas`` (the data's if None) and the
        pose rescoring and NMS settings of the task."""
        split = self.split(stage)
        return PoseEvaluator(split.images, split.coco_gt, split.category_id, split.keypoint_names,
                             sigmas if sigmas is not None else self.sigmas, split.skeleton, keypoint_score_threshold,
                             nms_threshold, split.description)
