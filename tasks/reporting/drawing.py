"""Predictions drawn on their images: boxes with class names and scores, segmentation overlays with a
legend, skeletons.

One set of functions draws everything Kestrel shows: the images ``predict`` writes, the sample grids of
the reports and the validation images TensorBoard gets every epoch. Images are ``(3, H, W)`` uint8
tensors, as torchvision's drawing utilities (which do the drawing) take them. Label ``k`` has colour
``k`` of the VOC palette everywhere, the colours of the label PNGs segmentation writes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_keypoints, draw_segmentation_masks

from ..data.voc import VOC_PALETTE
from ..evaluation import VOID

Colour = tuple[int, int, int]

# Detections and poses scoring at least this are drawn (predict's images, the reports' samples, TensorBoard).
DRAW_SCORE = 0.3


def colour(label: int) -> Colour:
    """The colour of label ``label`` (1..254; the VOC palette)."""
    index = 1 + (label - 1) % 254
    return tuple(VOC_PALETTE[3 * index: 3 * index + 3])


@functools.cache
def font_file() -> str:
    """A TrueType font to write with: matplotlib's DejaVu Sans (always installed with it)."""
    return font_manager.findfont("DejaVu Sans")


def _font_size(image: torch.Tensor) -> int:
    return max(10, min(image.shape[-2:]) // 28)


def draw_boxes(image: torch.Tensor, boxes, labels, class_names: Sequence[str], scores=None,
               width: int = 2) -> torch.Tensor:
    """Boxes ``(N, 4)`` xyxy in the image's pixels, each in its class's colour and captioned with the class
    name (labels ``1..K`` index ``class_names``) and, given ``scores``, the score."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = [int(label) for label in torch.as_tensor(labels).reshape(-1).tolist()]
    if not len(boxes):
        return image
    captions = [class_names[label - 1] if 0 < label <= len(class_names) else str(label) for label in labels]
    if scores is not None:
        captions = [f"{c} {float(s):.2f}" for c, s in zip(captions, torch.as_tensor(scores).reshape(-1).tolist())]
    colours = [colour(label) for label in labels]
    return draw_bounding_boxes(image, boxes, captions, colors=colours, width=width, font=font_file(),
                               font_size=_font_size(image),
                               label_colors="white", fill_labels=True, label_background_colors=colours)


def draw_labels(image: torch.Tensor, labels, label_names: Sequence[str], alpha: float = 0.55,
                legend: bool = True) -> torch.Tensor:
    """A segmentation ``(H, W)`` of label indices (0 background and 255 void are not coloured) over the image,
    with a legend of the classes it shows below it."""
    labels = torch.as_tensor(labels)
    present = [int(v) for v in labels.unique().tolist() if v not in (0, VOID)]
    drawn = image
    if present:
        masks = labels[None] == torch.tensor(present, dtype=labels.dtype)[:, None, None]
        drawn = draw_segmentation_masks(image, masks, alpha=alpha, colors=[colour(v) for v in present])
    if not legend:
        return drawn
    return add_legend(drawn, [(label_names[v] if v < len(label_names) else str(v), colour(v)) for v in present])


def add_legend(image: torch.Tensor, entries: Sequence[tuple[str, Colour]]) -> torch.Tensor:
    """The image with a strip below it naming each colour (``"none"`` when there is nothing to name)."""
    size = _font_size(image)
    font = ImageFont.truetype(font_file(), size)
    width = image.shape[-1]
    pad = size // 2
    items = list(entries) or [("none", (128, 128, 128))]
    rows, x, y = [], pad, pad
    for name, rgb in items:  # lay the entries out in rows that fit the width
        length = int(font.getlength(name)) + size + 2 * pad
        if x + length > width and x > pad:
            x, y = pad, y + size + pad
        rows.append((x, y, name, rgb))
        x += length
    strip = Image.new("RGB", (width, y + size + pad), (255, 255, 255))
    canvas = ImageDraw.Draw(strip)
    for x, y, name, rgb in rows:
        canvas.rectangle((x, y, x + size, y + size), fill=rgb, outline=(0, 0, 0))
        canvas.text((x + size + pad // 2, y), name, fill=(0, 0, 0), font=font)
    legend = torch.from_numpy(np.array(strip)).permute(2, 0, 1)  # a writable copy of PIL's buffer
    return torch.cat([image, legend], 1)


def draw_poses(image: torch.Tensor, keypoints, visible, skeleton: Sequence[tuple[int, int]],
               colours: Colour | Sequence[Colour] | None = None) -> torch.Tensor:
    """Skeletons of ``P`` people: ``keypoints`` ``(P, K, 2)`` in the image's pixels, ``visible`` ``(P, K)``
    (points and limbs drawn only between visible points), ``skeleton`` 0-based keypoint pairs; one colour
    for all, or one per person (default: the palette)."""
    points = torch.as_tensor(np.asarray(keypoints), dtype=torch.float32).reshape(-1, *np.shape(keypoints)[-2:])
    shown = torch.as_tensor(np.asarray(visible)).reshape(points.shape[:2]).bool()
    if colours is None:
        colours = [colour(p + 1) for p in range(len(points))]
    if isinstance(colours, tuple) and isinstance(colours[0], int):
        colours = [colours] * len(points)
    radius = max(2, min(image.shape[-2:]) // 120)
    for person, person_visible, rgb in zip(points, shown, colours):
        image = draw_keypoints(image, person[None], list(skeleton), colors=tuple(rgb), radius=radius,
                               width=radius, visibility=person_visible[None])
    return image


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Write a drawn ``(3, H, W)`` uint8 image; the suffix chooses the format (JPEG at quality 90)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(image.permute(1, 2, 0).contiguous().cpu().numpy())
    picture.save(path, **({"quality": 90} if path.suffix.lower() in (".jpg", ".jpeg") else {}))
    return path


def draw_detections(image: torch.Tensor, boxes, scores, labels, class_names: Sequence[str]) -> torch.Tensor:
    """The image with the detections scoring at least ``DRAW_SCORE``: boxes, class names and scores."""
    keep = np.asarray(scores) >= DRAW_SCORE
    return draw_boxes(image, np.asarray(boxes)[keep], np.asarray(labels)[keep], class_names, np.asarray(scores)[keep])


def draw_people(image: torch.Tensor, keypoints, visible, box_scores, skeleton: Sequence[tuple[int, int]],
                colours: Colour | Sequence[Colour] | None = None) -> torch.Tensor:
    """The image with the skeletons of the people whose box scores at least ``DRAW_SCORE`` (``keypoints``
    ``(P, K, 2)``, ``visible`` ``(P, K)``: the keypoints drawn)."""
    keep = np.asarray(box_scores) >= DRAW_SCORE
    if not keep.any():
        return image
    return draw_poses(image, np.asarray(keypoints)[keep], np.asarray(visible)[keep], skeleton, colours)
