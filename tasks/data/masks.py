"""Segmentation masks on disk: PNGs of class indices (VOC's ``SegmentationClass``), errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..evaluation import VOID


def read_mask(path: str | Path, num_labels: int) -> np.ndarray:
    """A PNG of class indices (palette or greyscale) as ``(H, W)`` uint8.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a PNG of indices, or values above ``num_labels - 1`` other than 255 (void).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask {str(path)!r} does not exist")
    with Image.open(path) as png:
        if png.mode not in ("P", "L"):
            raise ValueError(f"mask {str(path)!r} is a {png.mode} image; masks are palette or greyscale PNGs of "
                             "class indices (VOC's SegmentationClass)")
        mask = np.array(png)
    invalid = (mask >= num_labels) & (mask != VOID)  # two compares: a tenth of np.unique's time on every mask read
    if invalid.any():
        bad = np.unique(mask[invalid])
        raise ValueError(
            f"mask {str(path)!r} has values {bad.tolist()}; with {num_labels - 1} classes and background only "
            f"0..{num_labels - 1} and {VOID} (void) are valid"
        )
    return mask
