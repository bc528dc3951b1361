"""Reading images: OpenCV's libjpeg-turbo/libpng decoders, RGB out, errors that name the file."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# OpenCV's own thread pool fights the loader's worker processes for the cores, and a process that
# forks after using it can deadlock in the child. Parallelism comes from the loader workers instead.
cv2.setNumThreads(0)


def read_image(path: str | Path) -> np.ndarray:
    """Decode ``path`` into an ``(H, W, 3)`` uint8 RGB array; grayscale and PNG images included.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded as an image.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {str(path)!r} does not exist") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ValueError(f"image {str(path)!r} cannot be decoded: the file is corrupt or not an image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def check_files_exist(files: list[Path], what: str) -> None:
    """Raise ``FileNotFoundError`` listing the missing ones, before any training starts."""
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise FileNotFoundError(f"{len(missing)} image(s) of {what} do not exist: {shown}")


#: the EXIF tag of an image's orientation, and its values that turn the image a quarter (width and height swap)
EXIF_ORIENTATION = 0x0112
QUARTER_TURNS = (5, 6, 7, 8)


def check_image_header(path: Path, width: int | None = None, height: int | None = None) -> tuple[int, int]:
    """The ``(width, height)`` of image ``path`` by its header, as it is displayed and decoded (an EXIF orientation
    that turns it a quarter swaps them, as :func:`read_image` turns the pixels); ``ValueError`` (or
    ``FileNotFoundError``) naming the file if it is empty, not an image, or another size than its annotation's
    ``width`` x ``height``. Reads the header only: a file corrupt past its header is found when it is decoded."""
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"image {str(path)!r} is empty (0 bytes)")
    try:
        with Image.open(path) as image:
            size = image.size
            if image.getexif().get(EXIF_ORIENTATION, 1) in QUARTER_TURNS:  # decoded, it is displayed turned
                size = size[::-1]
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds for "not an image"
        raise ValueError(f"image {str(path)!r} cannot be decoded ({type(err).__name__}: {err})") from None
    if width and height and size not in ((width, height), (height, width)):  # (EXIF rotation swaps them)
        raise ValueError(f"image {str(path)!r} is {size[0]}x{size[1]} pixels, its annotation says {width}x{height}")
    return size
