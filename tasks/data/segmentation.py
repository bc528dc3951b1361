"""Semantic segmentation data: VOC ``SegmentationClass`` masks, or COCO instances rasterized to classes.

Masks hold class indices, 0 background and 255 void (ignored by loss and metric). VOC masks are
palette PNGs read as indices; COCO polygons and RLE become classes by pycocotools, crowd regions void,
for all categories or, as torchvision's COCO-VOC evaluation, the 20 VOC classes (others background).
Training crops come from albumentations (random scale 0.5-2, pad with mask void, crop, flip, colour
jitter); evaluation keeps image and mask as they are: the model fits the image to its input itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import albumentations as A
import cv2
import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset

from ..evaluation import VOID, SegmentationEvaluator
from ._module import KestrelDataModule, check_size
from .coco import load_coco, read_categories
from .images import check_files_exist, read_image
from .masks import read_mask
from .voc import VOC_CLASSES, read_split

# torchvision's COCO-VOC mapping (references/segmentation): VOC label i is COCO category COCO_VOC_IDS[i].
COCO_VOC_IDS = [0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72]


@dataclass
class SegmentationRecord:
    """One image and where its mask comes from (a PNG, or COCO annotations to rasterize)."""

    file: Path
    image_id: int | str
    width: int | None = None
    height: int | None = None
    mask_file: Path | None = None
    annotations: list[dict] | None = None


@dataclass
class SegmentationSplit:
    """A split's records, its class names (without background) and, for COCO, the label mapping."""

    records: list[SegmentationRecord]
    class_names: list[str]
    description: str
    coco: COCO | None = None
    label_of: dict[int, int] | None = None
    category_ids: list[int] | None = None

    @property
    def label_names(self) -> list[str]:
        """Names of every label, background first."""
        return ["background", *self.class_names]

    @property
    def files(self) -> list[Path]:
        return [r.file for r in self.records]

    @property
    def vocabulary(self) -> tuple:
        return tuple(self.class_names)

    def mask(self, record: SegmentationRecord) -> np.ndarray | None:
        """The record's mask of labels (0 background, 255 void), or None for images without one."""
        if record.mask_file is not None:
            return read_mask(record.mask_file, len(self.class_names) + 1)
        if record.annotations is None:
            return None
        mask = np.zeros((record.height, record.width), np.uint8)
        # larger objects first, so smaller ones in front of them keep their pixels
        for ann in sorted(record.annotations, key=lambda a: -a.get("area", 0)):
            label = VOID if ann.get("iscrowd", 0) else self.label_of.get(ann["category_id"], 0)
            if label:
                mask[self.coco.annToMask(ann) > 0] = label
        return mask


def voc_segmentation_split(root: str | Path, split: str, classes: list[str], mask_dir: str) -> SegmentationSplit:
    """``ROOT/ImageSets/Segmentation/{split}.txt``, images in ``JPEGImages``, masks in ``mask_dir``."""
    root = Path(root)
    records = [
        SegmentationRecord(root / "JPEGImages" / f"{stem}.jpg", stem, mask_file=root / mask_dir / f"{stem}.png")
        for stem in read_split(root, "Segmentation", split)
    ]
    check_files_exist([r.mask_file for r in records], f"the masks of VOC {split} in {root / mask_dir}")
    return SegmentationSplit(records, list(classes), f"VOC {split} of {root}")


def coco_segmentation_split(root: str | Path, split: str, classes: Literal["all", "voc"]) -> SegmentationSplit:
    """``ROOT/annotations/instances_{split}.json``; all categories, or the VOC ones (others background)."""
    root = Path(root)
    coco_file = load_coco(root / "annotations" / f"instances_{split}.json")
    coco = COCO()
    coco.dataset = coco_file.data
    coco.createIndex()
    if classes == "voc":
        names, label_of = list(VOC_CLASSES), {cid: i for i, cid in enumerate(COCO_VOC_IDS) if i}
    else:
        names, label_of = coco_file.class_names, coco_file.label_of
    records = [
        SegmentationRecord(root / split / im["file_name"], im["id"], im["width"], im["height"],
                           annotations=coco_file.annotations[im["id"]])
        for im in coco_file.images
    ]
    ids = COCO_VOC_IDS[1:] if classes == "voc" else coco_file.category_ids
    return SegmentationSplit(records, names, str(coco_file.path), coco, label_of, ids)


def segmentation_transform(crop_size: int, scale_range: tuple[float, float] = (0.5, 2.0)) -> A.Compose:
    """Training crops: scale, pad (image 0, mask void), crop, flip, colour jitter."""
    return A.Compose([
        A.RandomScale(scale_limit=(scale_range[0] - 1, scale_range[1] - 1), p=1.0),
        A.PadIfNeeded(crop_size, crop_size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=VOID),
        A.RandomCrop(crop_size, crop_size),
        A.HorizontalFlip(p=0.5),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5),
    ])


class SegmentationDataset(Dataset):
    """Items ``(image uint8 (3, H, W), {"mask": int64 (H, W), "image_id", "file"})``.

    Training images and masks are cropped by ``transform``; evaluation ones (``transform`` None) stay
    at the image's own size (the mask empty when the image has none).
    """

    def __init__(self, split: SegmentationSplit, transform: A.Compose | None):
        self.split = split
        self.records = split.records
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        image = read_image(record.file)
        height, width = image.shape[:2]
        mask = self.split.mask(record)
        if mask is not None and mask.shape != (height, width):
            raise ValueError(
                f"mask of {str(record.file)!r} is {mask.shape[1]}x{mask.shape[0]}, the image {width}x{height}"
                + (f" ({record.mask_file})" if record.mask_file else "")
            )
        if self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mask = torch.zeros(0, dtype=torch.int64) if mask is None else torch.from_numpy(mask.astype(np.int64))
        return image, {"mask": mask, "image_id": record.image_id, "file": record.file}


class SegmentationData(KestrelDataModule):
    """VOC or COCO semantic segmentation data for ``python -m tasks.segment``.

    Args:
        root: The data set's folder.
        format: ``"voc"`` or ``"coco"``.
        classes: VOC only: class names in label order, background not included (default: VOC's 20).
        train_split: VOC ``train`` / COCO ``train2017`` by default (VOC + SBD: ``trainaug``).
        val_split: VOC ``val`` / COCO ``val2017`` by default.
        test_split: The split ``test`` evaluates; ``val_split`` by default.
        train_mask_dir: VOC only: where the training masks are (``SegmentationClassAug`` for SBD).
        coco_classes: COCO only: ``"all"`` categories or the ``"voc"`` 20 (torchvision's COCO-VOC).
        image_size: Side of the square the model fits images into (evaluation, prediction, export).
        crop_size: Side of the training crops; ``image_size`` if None. Smaller crops at the scale the
            evaluation shows objects at step faster with the same detail.
        scale_range: Random scale range of training images.
        batch_size: Images per batch and device.
        num_workers: Loader processes per device.
        predict_dir: A folder of images for ``predict``; the validation split by default.
        pin_memory: Page-locked batches, for faster copies to a GPU.
        check_files: Check every image header and mask before the first step (sizes, decodable, mask
            modes and class indices): a bad file fails the run at once, not after an epoch.
    """

    def __init__(
        self,
        root: str,
        format: Literal["voc", "coco"] = "voc",
        classes: list[str] | None = None,
        train_split: str | None = None,
        val_split: str | None = None,
        test_split: str | None = None,
        train_mask_dir: str = "SegmentationClass",
        coco_classes: Literal["all", "voc"] = "all",
        image_size: int = 513,
        crop_size: int | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        batch_size: int = 16,
        num_workers: int = 4,
        predict_dir: str | None = None,
        pin_memory: bool = True,
        check_files: bool = True,
    ):
        super().__init__(format, train_split, val_split, test_split, predict_dir, batch_size, num_workers, pin_memory,
                         check_files)
        if format == "coco" and classes:
            raise ValueError("data.classes is for VOC data; for COCO choose data.coco_classes: all or voc")
        self.root = root
        coco = format == "coco"
        self.train_mask_dir = train_mask_dir
        self.coco_classes = coco_classes
        self.image_size = check_size(image_size, "data.image_size")
        self.crop_size = check_size(crop_size or image_size, "data.crop_size")
        self.scale_range = tuple(scale_range)
        if coco and coco_classes == "all":  # the categories decide the label count, which the model needs now
            path = Path(root) / "annotations" / f"instances_{self.val_split}.json"
            self.class_names, self.category_ids = read_categories(path)
        elif coco:  # torchvision's COCO-VOC benchmark: VOC's classes by their COCO category ids
            self.class_names, self.category_ids = list(VOC_CLASSES), COCO_VOC_IDS[1:]
        else:
            self.class_names = list(classes or VOC_CLASSES)
            self.category_ids = list(range(1, len(self.class_names) + 1))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def label_names(self) -> list[str]:
        """Names of every label, background first."""
        return ["background", *self.class_names]

    def load_split(self, stage: str, name: str) -> SegmentationSplit:
        if self.format == "coco":
            return coco_segmentation_split(self.root, name, self.coco_classes)
        mask_dir = self.train_mask_dir if stage == "train" else "SegmentationClass"
        return voc_segmentation_split(self.root, name, self.class_names, mask_dir)

    def folder_split(self, files: list[Path]) -> SegmentationSplit:
        records = [SegmentationRecord(f, f.stem) for f in files]
        return SegmentationSplit(records, self.class_names, str(self.predict_dir))

    def dataset(self, split: SegmentationSplit, train: bool) -> SegmentationDataset:
        return SegmentationDataset(split, segmentation_transform(self.crop_size, self.scale_range) if train else None)

    def evaluator(self, stage: str, **options) -> SegmentationEvaluator:
        """mIoU over every pixel of the split, void pixels ignored."""
        split = self.split(stage)
        return SegmentationEvaluator(split.class_names, split.description, **options)
