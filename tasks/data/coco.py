"""COCO annotation files: loading with errors that name the file, and the label mapping.

Contiguous labels follow the sorted category ids (background 0 where a head has one), torchvision's
convention; the data set's own ids stay available for results files.
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def load_json(path: str | Path) -> Any:
    """``json.load`` with errors naming the file and the position."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {str(path)!r} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError as err:
        raise ValueError(f"annotation file {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start})"
                         ) from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"annotation file {str(path)!r} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}"
        ) from None


@dataclass
class CocoFile:
    """A validated COCO annotation file.

    Attributes:
        path: The file.
        data: The parsed JSON, as pycocotools' ``COCO`` takes it.
        category_ids: Category ids in label order (label ``i + 1`` is ``category_ids[i]``).
        class_names: Category names in label order.
        images: The ``images`` entries, sorted by id.
        annotations: Per image id, its annotations (images without any have an empty list).
    """

    path: Path
    data: dict
    category_ids: list[int]
    class_names: list[str]
    images: list[dict]
    annotations: dict[int, list[dict]] = field(repr=False)

    @property
    def label_of(self) -> dict[int, int]:
        return {cid: i + 1 for i, cid in enumerate(self.category_ids)}


def finite_number(value: Any) -> bool:
    """A JSON number that is finite (not a bool, NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _entry_problem(section: str, entry: Any) -> str | None:
    """What makes one entry of ``images`` / ``annotations`` / ``categories`` unusable, or None."""
    if not isinstance(entry, dict):
        return f"is a {type(entry).__name__}, not an object"
    if not _id(entry.get("id")) and section != "annotations":
        return f"has no valid id ({entry.get('id')!r})"
    if section == "categories" and not isinstance(entry.get("name"), str):
        return f"(id {entry['id']!r}) has no name"
    if section == "images":
        if not isinstance(entry.get("file_name"), str) or not entry["file_name"]:
            return f"(id {entry['id']!r}) has no file_name"
        for key in ("width", "height"):
            if entry.get(key) is not None and not (finite_number(entry[key]) and entry[key] > 0):
                return f"(id {entry['id']!r}) has {key} {entry[key]!r}; it must be a positive number"
    if section == "annotations":
        for key in ("image_id", "category_id"):
            if not _id(entry.get(key)):
                return f"(id {entry.get('id')!r}) has no valid {key} ({entry.get(key)!r})"
        if "area" in entry and not finite_number(entry["area"]):
            return f"(id {entry.get('id')!r}) has area {entry['area']!r}; it must be a number"
        if entry.get("iscrowd", 0) not in (0, 1, False, True):
            return f"(id {entry.get('id')!r}) has iscrowd {entry['iscrowd']!r}; it must be 0 or 1"
    return None


def read_category_entries(path: str | Path) -> list[dict]:
    """The ``categories`` of an annotation file, checked and sorted by id: what a model must be told before the
    data is read (the rest of the file is checked when a split is loaded)."""
    path = Path(path)
    data = load_json(path)
    categories = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(categories, list):
        raise ValueError(f"annotation file {str(path)!r} has no 'categories' list")
    for i, entry in enumerate(categories):
        problem = _entry_problem("categories", entry)
        if problem:
            raise ValueError(f"annotation file {str(path)!r}: categories entry {i} {problem}")
    return sorted(categories, key=lambda c: c["id"])


def read_categories(path: str | Path) -> tuple[list[str], list[int]]:
    """The class names and category ids of an annotation file, in label order (sorted ids)."""
    categories = read_category_entries(path)
    return [c["name"] for c in categories], [c["id"] for c in categories]


def _number_annotations(path: Path, annotations: list[dict]) -> None:
    """COCOeval tells ground-truth objects apart by their ``id``: repeated ids make it match detections to the wrong
    objects (a well-trained detector scored 0.0003 mAP instead of 0.617) and a missing one fails it. If any id is
    repeated or missing, every annotation is numbered 1..N in the file's order (the evaluation does not depend on
    which ids objects have, only that they differ) and a warning says so; the file is not changed."""
    ids = [ann.get("id") for ann in annotations]
    missing = sum(not _id(i) for i in ids)
    valid = [i for i in ids if _id(i)]
    repeated = len(valid) - len(set(valid))
    if not missing and not repeated:
        return
    for number, ann in enumerate(annotations, 1):
        ann["id"] = number
    log.warning("annotation file %s: %d annotation(s) without an id and %d repeating another's id; every annotation "
                "numbered 1..%d in the file's order for this run (the file is unchanged)", path, missing, repeated,
                len(annotations))


def load_coco(path: str | Path) -> CocoFile:
    """Load and validate a COCO annotation file (instances or person_keypoints).

    Raises:
        FileNotFoundError: no such file.
        ValueError: malformed JSON, a missing section, an annotation naming an unknown category or
            image, a malformed ``bbox``; the message names the file and the entry.
    """
    path = Path(path)
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"annotation file {str(path)!r} must hold a JSON object, not {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"annotation file {str(path)!r} has no {key!r} list")
        for i, entry in enumerate(data[key]):
            problem = _entry_problem(key, entry)
            if problem:
                raise ValueError(f"annotation file {str(path)!r}: {key} entry {i} {problem}")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    category_ids = [c["id"] for c in categories]
    if len(set(category_ids)) != len(category_ids):
        raise ValueError(f"annotation file {str(path)!r} repeats category ids: {category_ids}")
    names = [c["name"] for c in categories]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        ids = [c["id"] for c in categories if c["name"] == repeated[0]]
        raise ValueError(f"annotation file {str(path)!r}: categories {ids} share the name {repeated[0]!r}; a model's "
                         "classes and the per-class results go by name: give each category a name of its own")
    _number_annotations(path, data["annotations"])
    images = sorted(data["images"], key=lambda im: im["id"])
    if not images:
        raise ValueError(f"annotation file {str(path)!r} lists no images: an empty split can be neither trained "
                         "nor evaluated")
    image_ids = {im["id"] for im in images}
    if len(image_ids) != len(images):
        raise ValueError(f"annotation file {str(path)!r} repeats image ids")
    known = set(category_ids)
    annotations: dict[int, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        where = f"annotation file {str(path)!r}: annotation {ann.get('id')!r}"
        if ann.get("category_id") not in known:
            raise ValueError(
                f"{where} names category_id {ann.get('category_id')!r}, which is not among the file's "
                f"categories {category_ids}"
            )
        if ann.get("image_id") not in image_ids:
            raise ValueError(f"{where} names image_id {ann.get('image_id')!r}, which is not among the file's images")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(finite_number(v) for v in bbox)):
            raise ValueError(f"{where} has a malformed bbox {bbox!r} (expected [x, y, width, height])")
        if "area" not in ann:  # COCOeval sizes objects by it
            ann["area"] = max(bbox[2], 0) * max(bbox[3], 0)
        annotations[ann["image_id"]].append(ann)
    return CocoFile(path, data, category_ids, [c["name"] for c in categories], images,
                    {im["id"]: annotations.get(im["id"], []) for im in images})
