"""Detection data: COCO and VOC folders (or a folder of images to predict on) as one LightningDataModule.

Real-data quirks are handled here: category ids with gaps (contiguous labels in sorted-id order),
``iscrowd`` regions (out of training, crowd in evaluation), images without annotations (kept),
degenerate boxes (dropped and counted), grayscale and PNG images, VOC's 1-based boxes and
``difficult`` objects (out of training by default, ignored by evaluation).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

from ..evaluation import DetectionEvaluator
from ._module import KestrelDataModule, check_size
from .coco import load_coco, read_categories
from .images import read_image
from .transforms import DetectionPreset, detection_transform
from .voc import VOC_CLASSES, read_annotation, read_split

log = logging.getLogger(__name__)


@dataclass
class DetectionRecord:
    """One image and its training boxes.

    Attributes:
        file: The image file.
        image_id: The data set's own id (COCO id, VOC file stem, file name for a folder).
        eval_id: The image's id in the evaluation ground truth.
        width: Width the annotation states (None if it states none).
        height: Height the annotation states.
        boxes: Training boxes, ``(N, 4)`` pixel ``x1, y1, x2, y2``.
        labels: Their labels, 1..K.
    """

    file: Path
    image_id: int | str
    eval_id: int
    width: int | None
    height: int | None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class DetectionSplit:
    """A split's records and what evaluating on it needs.

    Attributes:
        records: The images.
        class_names: Names of labels 1..K.
        category_ids: The data set's category id of labels 1..K (1..K for VOC).
        coco_gt: COCO-format ground truth (COCO: the annotation file itself; VOC: converted, with
            difficult objects as crowd regions); None for a folder of images.
        voc_gt: VOC data only: per ``eval_id``, ``(boxes, labels, difficult)``.
        description: What the split is, for reports and errors.
    """

    records: list[DetectionRecord]
    class_names: list[str]
    category_ids: list[int]
    coco_gt: dict | None = None
    voc_gt: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
    description: str = ""

    @property
    def files(self) -> list[Path]:
        return [r.file for r in self.records]

    @property
    def vocabulary(self) -> tuple:
        return tuple(self.class_names), tuple(self.category_ids)


def _clip_boxes(boxes: np.ndarray, width: int | None, height: int | None) -> np.ndarray:
    if width is not None and height is not None:
        boxes = boxes.copy()
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    return boxes


def _has_area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _drop_degenerate(boxes: np.ndarray, *others: np.ndarray) -> tuple[int, tuple[np.ndarray, ...]]:
    keep = _has_area(boxes)
    return int((~keep).sum()), (boxes[keep], *(o[keep] for o in others))


def coco_detection_split(root: str | Path, split: str) -> DetectionSplit:
    """``ROOT/annotations/instances_{split}.json`` with images at ``ROOT/{split}/{file_name}``."""
    root = Path(root)
    coco = load_coco(root / "annotations" / f"instances_{split}.json")
    label_of = coco.label_of
    records, degenerate, crowd = [], [], 0
    for image in coco.images:
        anns = [a for a in coco.annotations[image["id"]] if not a.get("iscrowd", 0)]
        crowd += len(coco.annotations[image["id"]]) - len(anns)
        xywh = np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes = _clip_boxes(boxes, image.get("width"), image.get("height"))
        labels = np.asarray([label_of[a["category_id"]] for a in anns], dtype=np.int64)
        keep = _has_area(boxes)
        degenerate += [id(a) for a, kept in zip(anns, keep) if not kept]
        boxes, labels = boxes[keep], labels[keep]
        records.append(
            DetectionRecord(root / split / image["file_name"], image["id"], image["id"],
                            image.get("width"), image.get("height"), boxes, labels)
        )
    ground_truth = coco.data
    if degenerate:
        log.warning("%s: dropped %d degenerate box(es) (no area inside the image) from training and from the "
                    "evaluation ground truth", coco.path, len(degenerate))
        dropped = set(degenerate)
        ground_truth = {**coco.data, "annotations": [a for a in coco.data["annotations"] if id(a) not in dropped]}
    if crowd:
        log.info("%s: %d crowd region(s) are left out of training and count as crowd in evaluation",
                 coco.path, crowd)
    return DetectionSplit(records, coco.class_names, coco.category_ids, ground_truth, None, f"{coco.path}")


def voc_detection_split(
    roots: Sequence[str | Path], split: str, classes: Sequence[str], use_difficult: bool = False
) -> DetectionSplit:
    """``ROOT/ImageSets/Main/{split}.txt`` of every root (VOC07+12: both years), XML and JPEG images."""
    classes = list(classes)
    records, images, annotations = [], [], []
    voc_gt: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    degenerate = 0
    for root in map(Path, roots):
        for stem in read_split(root, "Main", split):
            eval_id = len(records)
            objects = read_annotation(root / "Annotations" / f"{stem}.xml", classes)
            boxes = _clip_boxes(objects.boxes, objects.width, objects.height)
            dropped, (boxes, labels, difficult) = _drop_degenerate(boxes, objects.labels, objects.difficult)
            degenerate += dropped
            voc_gt[eval_id] = (boxes, labels, difficult)
            train = np.ones(len(boxes), bool) if use_difficult else ~difficult
            records.append(DetectionRecord(root / "JPEGImages" / f"{stem}.jpg", stem, eval_id,
                                           objects.width, objects.height, boxes[train], labels[train]))
            images.append({"id": eval_id, "file_name": f"{stem}.jpg", "width": objects.width, "height": objects.height})
            for (x1, y1, x2, y2), label, hard in zip(boxes.tolist(), labels.tolist(), difficult.tolist()):
                annotations.append({
                    "id": len(annotations) + 1, "image_id": eval_id, "category_id": label,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": int(hard),
                })
    if degenerate:
        log.warning("VOC %s: dropped %d degenerate box(es) (no area inside the image) from training and from the "
                    "evaluation ground truth", split, degenerate)
    categories = [{"id": i, "name": name} for i, name in enumerate(classes, start=1)]
    gt = {"images": images, "annotations": annotations, "categories": categories}
    where = ", ".join(str(r) for r in roots)
    return DetectionSplit(records, classes, list(range(1, len(classes) + 1)), gt, voc_gt, f"VOC {split} of {where}")


class DetectionDataset(Dataset):
    """Images with their boxes: ``(image uint8 (3, H, W), {"boxes", "labels", "image_id", "file"})``.

    Training images go through an albumentations pipeline that ends at the model's input size;
    evaluation images (``transform`` None) stay as they are: the model resizes them itself.
    """

    def __init__(self, records: list[DetectionRecord], transform: A.Compose | None):
        self.records = records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = read_image(record.file)
        height, width = image.shape[:2]
        if record.width is not None and (width, height) != (record.width, record.height):
            raise ValueError(
                f"image {str(record.file)!r} is {width}x{height} but its annotation says "
                f"{record.width}x{record.height}"
            )
        out = {"image": image, "bboxes": record.boxes, "labels": record.labels}
        if self.transform is not None:
            out = self.transform(**out)
        target = {
            "boxes": torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(out["labels"], dtype=np.int64)),
            "image_id": record.image_id,
            "file": record.file,
        }
        image = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)
        return image, target


class DetectionData(KestrelDataModule):
    """COCO or VOC detection data for ``python -m tasks.detect``.

    Args:
        root: The data set's folder (for VOC, the one with ``JPEGImages``; val and test come from it).
        format: ``"coco"`` or ``"voc"``.
        classes: VOC only: class names in label order (default: the 20 VOC classes).
        train_split: COCO ``train2017`` / VOC ``train`` by default.
        val_split: COCO ``val2017`` / VOC ``val`` by default.
        test_split: The split ``test`` evaluates; ``val_split`` by default.
        train_roots: VOC only: folders whose ``train_split`` lists are concatenated for training
            (VOC07+12: the 2007 and 2012 folders); ``[root]`` by default.
        image_size: Side of the square training images are resized to: the detector's input size.
        augment: Training augmentation preset: ``"ssdlite"``, ``"ssd"`` or ``"none"``.
        batch_size: Images per batch and device.
        num_workers: Loader processes per device.
        use_difficult: VOC only: train on ``difficult`` objects too.
        predict_dir: A folder of images for ``predict``; the validation split by default.
        pin_memory: Page-locked batches, for faster copies to a GPU.
        check_files: Check every image header and mask before the first step (sizes, decodable, mask
            modes and class indices): a bad file fails the run at once, not after an epoch.
    """

    def __init__(
        self,
        root: str,
        format: Literal["coco", "voc"] = "coco",
        classes: list[str] | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        train_roots: list[str] | None = None,
        image_size: int = 320,
        augment: DetectionPreset = "ssdlite",
        batch_size: int = 24,
        num_workers: int = 4,
        use_difficult: bool = False,
        predict_dir: str | None = None,
        pin_memory: bool = True,
        check_files: bool = True,
    ):
        super().__init__(format, train_split, val_split, test_split, predict_dir, batch_size, num_workers, pin_memory,
                         check_files)
        if format == "coco" and (classes or train_roots):
            raise ValueError("data.classes and data.train_roots are for VOC data; COCO names its categories")
        self.root = root
        self.train_roots = train_roots or [root]
        self.image_size = check_size(image_size, "data.image_size")
        self.augment = augment
        self.use_difficult = use_difficult
        if format == "voc":
            self.class_names = list(classes or VOC_CLASSES)
            self.category_ids = list(range(1, len(self.class_names) + 1))
        else:  # the categories decide the label count, which the model needs before setup
            path = Path(root) / "annotations" / f"instances_{self.val_split}.json"
            self.class_names, self.category_ids = read_categories(path)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def load_split(self, stage: str, name: str) -> DetectionSplit:
        if self.format == "coco":
            return coco_detection_split(self.root, name)
        roots = self.train_roots if stage == "train" else [self.root]
        return voc_detection_split(roots, name, self.class_names, self.use_difficult and stage == "train")

    def folder_split(self, files: list[Path]) -> DetectionSplit:
        """Images to predict on; their ids are their file names."""
        records = [DetectionRecord(f, f.name, i, None, None) for i, f in enumerate(files)]
        return DetectionSplit(records, self.class_names, self.category_ids, description=str(self.predict_dir))

    def dataset(self, split: DetectionSplit, train: bool) -> DetectionDataset:
        return DetectionDataset(split.records, detection_transform(self.augment, self.image_size) if train else None)

    def evaluator(self, stage: str, **options) -> DetectionEvaluator:
        """COCO AP (and VOC07 / VOC12 AP@0.5 on VOC data) against the split's own ground truth."""
        split = self.split(stage)
        if split.coco_gt is None:
            raise ValueError(f"{split.description} has no annotations to evaluate against")
        return DetectionEvaluator(split.records, split.coco_gt, split.class_names, split.category_ids, split.voc_gt,
                                  split.description, **options)
