"""Pascal VOC folders: split lists and annotation XML, with errors that name the file."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

# VOC's colour map (label i -> colour), as in VOC's SegmentationClass PNGs; 255 (void) is near-white.
VOC_PALETTE = [c for i in range(256) for c in (
    sum(((i >> (3 * b)) & 1) << (7 - b) for b in range(8)),
    sum(((i >> (3 * b + 1)) & 1) << (7 - b) for b in range(8)),
    sum(((i >> (3 * b + 2)) & 1) << (7 - b) for b in range(8)),
)]


def read_split(root: str | Path, kind: str, split: str) -> list[str]:
    """Image ids of ``ROOT/ImageSets/{kind}/{split}.txt`` (``kind``: Main or Segmentation)."""
    path = Path(root) / "ImageSets" / kind / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"VOC split list {str(path)!r} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"VOC split list {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    ids = [line.split()[0] for line in text.splitlines() if line.strip()]
    if not ids:
        raise ValueError(f"VOC split list {str(path)!r} is empty")
    return ids


@dataclass
class VocObjects:
    """The objects of one annotation XML, boxes as continuous pixel ``x1, y1, x2, y2``.

    VOC's 1-based inclusive pixel boxes ``(xmin, ymin, xmax, ymax)`` become ``(xmin - 1, ymin - 1,
    xmax, ymax)``: the same region, so IoU and area equal the devkit's "+1" formulas.
    """

    width: int | None
    height: int | None
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def read_annotation(path: str | Path, classes: list[str]) -> VocObjects:
    """Parse one VOC XML; labels are 1-based indices into ``classes``.

    Raises:
        FileNotFoundError / ValueError naming the file: missing, malformed XML, an object of a class
        not in ``classes``, a malformed box.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VOC annotation {str(path)!r} does not exist")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"VOC annotation {str(path)!r} is malformed XML: {err}") from None
    size = root.find("size")
    width = height = None
    if size is not None and size.findtext("width") and size.findtext("height"):
        try:
            width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
        except (ValueError, OverflowError):
            raise ValueError(f"VOC annotation {str(path)!r} has a malformed size: width "
                             f"{size.findtext('width')!r}, height {size.findtext('height')!r}") from None
        if width <= 0 or height <= 0:
            raise ValueError(f"VOC annotation {str(path)!r} has size {width}x{height}; width and height must be "
                             "positive")
    boxes, labels, difficult = [], [], []
    for i, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if name not in classes:
            raise ValueError(
                f"VOC annotation {str(path)!r}: object {i} is a {name!r}, which is not in data.classes "
                f"{list(classes)}; add it there or remove the object"
            )
        box = obj.find("bndbox")
        try:
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise ValueError(f"VOC annotation {str(path)!r}: object {i} ({name}) has a malformed bndbox") from None
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            raise ValueError(f"VOC annotation {str(path)!r}: object {i} ({name}) has a bndbox that is not finite")
        boxes.append((xmin - 1, ymin - 1, xmax, ymax))
        labels.append(classes.index(name) + 1)
        difficult.append(obj.findtext("difficult", "0").strip() == "1")
    return VocObjects(
        width,
        height,
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        np.asarray(difficult, dtype=bool),
    )
