"""A synthetic data set written as real COCO and VOC folders, for the demo and the tests.

``python -m tasks.data.synthetic --out data/shapes`` draws circles, squares, triangles and frontal
stick-figure people on textured backgrounds and writes::

    OUT/coco/annotations/instances_{train2017,val2017}.json        boxes, polygons and RLE masks
    OUT/coco/annotations/person_keypoints_{train2017,val2017}.json 17 COCO keypoints per person
    OUT/coco/{train2017,val2017}/*.jpg|png
    OUT/voc/JPEGImages/*.jpg, Annotations/*.xml, SegmentationClass/*.png (palette, 255 = void)
    OUT/voc/ImageSets/{Main,Segmentation}/{train,val}.txt

The data carry the quirks real sets have: category ids with gaps, crowd regions (VOC: difficult
objects), images without objects, occlusion, objects of every COCO size, grayscale and PNG images,
keypoints with visibility 0/1/2. A person's left side is geometric (frontal figures: the person's
left is the image's right), so flipping with left/right swapped stays consistent.
"""

from __future__ import annotations

import argparse
import json
import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from .voc import VOC_PALETTE

# id -> name; ids have gaps on purpose, and person keeps COCO's id 1.
CATEGORIES = {1: "person", 3: "circle", 4: "square", 8: "triangle"}
SHAPES = ("circle", "square", "triangle")
VOC_SYNTHETIC_CLASSES = [CATEGORIES[i] for i in sorted(CATEGORIES)]
KEYPOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]
SKELETON = [  # COCO's, 1-based
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]
# Frontal figure in units of its height, centred on x = 0: (x, y) of each keypoint; +x is the
# person's left (the image's right).
_POSE = {
    "nose": (0.0, 0.07), "left_eye": (0.025, 0.055), "right_eye": (-0.025, 0.055),
    "left_ear": (0.05, 0.065), "right_ear": (-0.05, 0.065), "left_shoulder": (0.13, 0.2),
    "right_shoulder": (-0.13, 0.2), "left_elbow": (0.2, 0.36), "right_elbow": (-0.2, 0.36),
    "left_wrist": (0.23, 0.5), "right_wrist": (-0.23, 0.5), "left_hip": (0.08, 0.53),
    "right_hip": (-0.08, 0.53), "left_knee": (0.1, 0.74), "right_knee": (-0.1, 0.74),
    "left_ankle": (0.11, 0.96), "right_ankle": (-0.11, 0.96),
}
_LIMBS = [("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("right_shoulder", "right_elbow"),
          ("right_elbow", "right_wrist"), ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
          ("right_hip", "right_knee"), ("right_knee", "right_ankle")]
@dataclass
class Instance:
    category: str
    mask: np.ndarray  # full (unoccluded) rendering, bool
    polygon: list[float] | None  # exact outline, when the shape has one
    keypoints: np.ndarray | None = None  # (17, 2) for people
    crowd: bool = False


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour gradients, stripes and noise: texture that is not an object."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(40, 215, 3)
    tilt = rng.uniform(-0.25, 0.25, (2, 3))
    image = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1]
    if rng.random() < 0.5:
        period, angle = rng.uniform(8, 30), rng.uniform(0, math.pi)
        stripes = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        image += stripes[..., None] * rng.uniform(5, 25)
    image += rng.normal(0, rng.uniform(3, 12), (h, w, 3))
    for _ in range(rng.integers(0, 6)):
        p1, p2 = rng.integers(0, [w, h], 2), rng.integers(0, [w, h], 2)
        cv2.line(image, tuple(map(int, p1)), tuple(map(int, p2)), rng.uniform(0, 255, 3).tolist(), 1)
    return image


def _shape(rng: np.random.Generator, kind: str, h: int, w: int, size: float) -> Instance:
    cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
    if kind == "circle":
        angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        points = np.stack([cx + size / 2 * np.cos(angles), cy + size / 2 * np.sin(angles)], 1)
    else:
        corners = 4 if kind == "square" else 3
        start = rng.uniform(0, 2 * np.pi)
        radius = size / 2 * (math.sqrt(2) if kind == "square" else 1.15) * 0.8
        angles = start + np.arange(corners) * 2 * np.pi / corners
        points = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], 1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return Instance(kind, mask.astype(bool), points.ravel().tolist())


def _person(rng: np.random.Generator, h: int, w: int, height: float) -> Instance:
    points = {k: np.array(v) for k, v in _POSE.items()}
    for k in points:  # a little pose variation; frontal, so left stays on the image's right
        points[k] = points[k] + rng.normal(0, 0.015, 2)
    for side in ("left", "right"):
        sign = 1 if side == "left" else -1
        raise_arm = rng.uniform(-0.25, 0.1)
        points[f"{side}_elbow"] += (sign * abs(raise_arm) * 0.4, raise_arm)
        points[f"{side}_wrist"] += (sign * abs(raise_arm) * 0.8, 2 * raise_arm)
    cx = rng.uniform(0.3 * height, w - 0.3 * height)
    top = rng.uniform(0, max(h - height, 1))
    xy = np.stack([points[k] for k in KEYPOINTS]) * height + (cx, top)
    mask = np.zeros((h, w), np.uint8)
    p = {k: tuple(map(int, np.round(xy[i]))) for i, k in enumerate(KEYPOINTS)}
    thickness = max(int(height * 0.05), 2)
    torso = np.array([p["left_shoulder"], p["right_shoulder"], p["right_hip"], p["left_hip"]], np.int32)
    cv2.fillPoly(mask, [torso], 1)
    for a, b in _LIMBS + [("left_shoulder", "right_shoulder"), ("left_hip", "right_hip")]:
        cv2.line(mask, p[a], p[b], 1, thickness)
    head = ((p["left_ear"][0] + p["right_ear"][0]) // 2, p["nose"][1] - int(0.01 * height))
    cv2.circle(mask, head, max(int(height * 0.07), 2), 1, -1)
    cv2.line(mask, head, ((p["left_shoulder"][0] + p["right_shoulder"][0]) // 2, p["left_shoulder"][1]), 1, thickness)
    return Instance("person", mask.astype(bool), None, xy)


def _paint(rng: np.random.Generator, image: np.ndarray, instance: Instance) -> None:
    colour = rng.uniform(0, 255, 3)
    while np.abs(colour - image[instance.mask].mean(0)).sum() < 120:  # stand out from what is below
        colour = rng.uniform(0, 255, 3)
    image[instance.mask] = colour + rng.normal(0, 4, (int(instance.mask.sum()), 3))
    if instance.category == "person":  # draw the face so left and right differ only by position
        for name, shade in (("left_eye", 0), ("right_eye", 0), ("nose", 255)):
            x, y = np.round(instance.keypoints[KEYPOINTS.index(name)]).astype(int)
            cv2.circle(image, (int(x), int(y)), 1, (shade,) * 3, -1)


def _size(rng: np.random.Generator, side: int) -> float:
    """Object sizes covering COCO's small (< 32 px), medium and large (> 96 px) areas."""
    u = rng.random()
    return rng.uniform(14, 30) if u < 0.1 else rng.uniform(34, 90) if u < 0.6 else rng.uniform(90, 0.6 * side)


def draw_image(rng: np.random.Generator) -> tuple[np.ndarray, list[Instance], np.ndarray]:
    """One image, its instances and their visible masks (later objects occlude earlier ones)."""
    h, w = int(rng.integers(256, 417)), int(rng.integers(256, 417))
    image = _background(rng, h, w)
    instances: list[Instance] = []
    if rng.random() >= 0.06:  # some images have nothing
        wanted = [("person", None)] * int(rng.choice([0, 0, 1, 1, 2])) + [
            (kind, None) for kind in rng.choice(SHAPES, int(rng.integers(1, 5)))
        ]
        rng.shuffle(wanted)
        for kind, _ in wanted:
            for _ in range(20):  # place it so it hides no earlier object by more than 40%
                if kind == "person":
                    candidate = _person(rng, h, w, rng.uniform(0.45, 0.95) * min(h, w))
                else:
                    candidate = _shape(rng, kind, h, w, _size(rng, min(h, w)))
                covered = [(inst.mask & candidate.mask).sum() / max(inst.mask.sum(), 1) for inst in instances]
                if all(c < 0.4 for c in covered) and candidate.mask.any():
                    instances.append(candidate)
                    break
        if rng.random() < 0.08:  # a crowd: a cluster of small circles annotated as one region
            centre = rng.uniform(30, [w - 30, h - 30])
            crowd = np.zeros((h, w), np.uint8)
            for _ in range(int(rng.integers(5, 9))):
                x, y = centre + rng.normal(0, 10, 2)
                cv2.circle(crowd, (int(x), int(y)), int(rng.integers(3, 6)), 1, -1)
            instances.append(Instance("circle", crowd.astype(bool), None, crowd=True))
    visible = []
    for i, inst in enumerate(instances):
        _paint(rng, image, inst)
        visible.append(inst.mask & ~np.any([later.mask for later in instances[i + 1:]], axis=0)
                       if i + 1 < len(instances) else inst.mask.copy())
    return np.clip(image, 0, 255).astype(np.uint8), instances, np.array(visible, dtype=bool).reshape(-1, h, w)


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _voc_xml(stem: str, w: int, h: int, objects: list[tuple[str, list[int], bool]]) -> str:
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = f"{stem}.jpg"
    size = ET.SubElement(root, "size")
    for key, value in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    for name, (x, y, bw, bh), difficult in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = name
        ET.SubElement(obj, "difficult").text = str(int(difficult))
        box = ET.SubElement(obj, "bndbox")  # VOC: 1-based, inclusive
        for key, value in (("xmin", x + 1), ("ymin", y + 1), ("xmax", x + bw), ("ymax", y + bh)):
            ET.SubElement(box, key).text = str(value)
    return ET.tostring(root, encoding="unicode")


def generate(out: str | Path, train: int = 2000, val: int = 100, seed: int = 0, progress: bool = True) -> Path:
    """Write the synthetic data set under ``out`` (see the module docstring); return ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    coco, voc = out / "coco", out / "voc"
    for folder in (coco / "annotations", coco / "train2017", coco / "val2017", voc / "JPEGImages",
                   voc / "Annotations", voc / "SegmentationClass", voc / "ImageSets" / "Main",
                   voc / "ImageSets" / "Segmentation"):
        folder.mkdir(parents=True, exist_ok=True)
    category_of = {name: cid for cid, name in CATEGORIES.items()}
    voc_label = {name: i + 1 for i, name in enumerate(VOC_SYNTHETIC_CLASSES)}
    categories = [{"id": cid, "name": name, "supercategory": "shape" if name != "person" else "person"}
                  for cid, name in CATEGORIES.items()]
    person_category = [{"id": 1, "name": "person", "supercategory": "person", "keypoints": KEYPOINTS,
                        "skeleton": SKELETON}]
    index = 0
    bar = tqdm(total=train + val, desc=f"synthetic data -> {out}", unit="img", disable=not progress)
    for coco_split, voc_split, count in (("train2017", "train", train), ("val2017", "val", val)):
        images, instances_json, keypoints_json, stems = [], [], [], []
        for _ in range(count):
            index += 1
            stem = f"{index:06d}"
            image, instances, visible = draw_image(rng)
            h, w = image.shape[:2]
            style = rng.random()
            suffix = ".png" if style < 0.05 else ".jpg"
            coco_image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if 0.05 <= style < 0.1 else image[..., ::-1]
            coco_file, voc_file = coco / coco_split / f"{stem}{suffix}", voc / "JPEGImages" / f"{stem}.jpg"
            cv2.imwrite(str(coco_file), coco_image)
            voc_file.unlink(missing_ok=True)
            if coco_image.ndim == 3 and suffix == ".jpg":  # the same bytes: link rather than copy
                try:
                    voc_file.hardlink_to(coco_file)
                except OSError:
                    cv2.imwrite(str(voc_file), coco_image)
            else:
                cv2.imwrite(str(voc_file), image[..., ::-1])
            images.append({"id": index, "file_name": f"{stem}{suffix}", "width": w, "height": h})
            segmentation = np.zeros((h, w), np.uint8)
            voc_objects = []
            for inst, vis in zip(instances, visible):
                if vis.sum() < 4:
                    continue
                occluded = vis.sum() < inst.mask.sum()
                ann = {
                    "id": len(instances_json) + 1, "image_id": index, "category_id": category_of[inst.category],
                    "bbox": _bbox(vis), "area": int(vis.sum()), "iscrowd": int(inst.crowd),
                    "segmentation": [inst.polygon] if inst.polygon and not occluded else _rle(vis),
                }
                instances_json.append(ann)
                segmentation[vis] = voc_label[inst.category]
                voc_objects.append((inst.category, ann["bbox"], inst.crowd))
                if inst.category == "person":
                    kps = []
                    for x, y in inst.keypoints:
                        xi, yi = int(round(x)), int(round(y))
                        if not (0 <= xi < w and 0 <= yi < h):
                            kps += [0, 0, 0]
                        else:
                            kps += [round(float(x), 2), round(float(y), 2), 2 if vis[yi, xi] else 1]
                    keypoints_json.append({**ann, "id": len(keypoints_json) + 1, "keypoints": kps,
                                           "num_keypoints": sum(v > 0 for v in kps[2::3])})
            # VOC marks object boundaries void (255)
            edges = cv2.morphologyEx(segmentation, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
            segmentation[edges] = 255
            png = Image.fromarray(segmentation, mode="P")
            png.putpalette(VOC_PALETTE)
            png.save(voc / "SegmentationClass" / f"{stem}.png")
            (voc / "Annotations" / f"{stem}.xml").write_text(_voc_xml(stem, w, h, voc_objects))
            stems.append(stem)
            bar.update()
        with open(coco / "annotations" / f"instances_{coco_split}.json", "w") as f:
            json.dump({"images": images, "annotations": instances_json, "categories": categories}, f)
        with open(coco / "annotations" / f"person_keypoints_{coco_split}.json", "w") as f:
            json.dump({"images": images, "annotations": keypoints_json, "categories": person_category}, f)
        for kind in ("Main", "Segmentation"):
            (voc / "ImageSets" / kind / f"{voc_split}.txt").write_text("\n".join(stems) + "\n")
    bar.close()
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tasks.data.synthetic", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/shapes", help="output folder (default data/shapes)")
    parser.add_argument("--train", type=int, default=2000, help="training images (default 2000)")
    parser.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = generate(args.out, args.train, args.val, args.seed)
    print(f"COCO layout: {out / 'coco'}  VOC layout: {out / 'voc'} (classes {VOC_SYNTHETIC_CLASSES})")


if __name__ == "__main__":
    main()
