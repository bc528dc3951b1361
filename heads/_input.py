"""What every Kestrel network does to its input first: uint8 RGB in, the backbone's normalized floats out.

The networks take ``uint8`` RGB images ``(N, 3, H, W)`` as a camera gives them and do the rest inside,
so the module that trains is the graph that ships (torchvision's detectors resize and normalize
inside ``GeneralizedRCNNTransform`` the same way). Everything here traces into an ONNX graph whose
``N``, ``H`` and ``W`` stay dynamic: sizes are read with ``torch.as_tensor(x.shape[i])``, which the
tracer records as ``Shape`` ops rather than freezing the example input's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def check_images(images: torch.Tensor, owner: str) -> None:
    """Raise ``TypeError`` / ``ValueError`` unless ``images`` is a uint8 ``(N, 3, H, W)`` batch."""
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{owner} takes a uint8 tensor (N, 3, H, W), got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise TypeError(
            f"{owner} takes uint8 RGB images (0-255), got {images.dtype}; for floats in [0, 1] pass "
            "(images * 255).round().to(torch.uint8)"
        )
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{owner} takes images (N, 3, H, W), got shape {tuple(images.shape)}")


def image_size(images: torch.Tensor) -> torch.Tensor:
    """``(height, width)`` of a batch as a float tensor; dynamic in a traced graph."""
    return torch.stack([torch.as_tensor(images.shape[-2]), torch.as_tensor(images.shape[-1])]).float()


def _taps(length: torch.Tensor, size: int | torch.Tensor, extent: int | torch.Tensor, device: torch.device):
    """For each of ``size`` output positions along an axis of ``length`` pixels stretched over the first
    ``extent`` of them: the two input pixels it lies between and the weight of the second (half-pixel
    centres, clamped at the edges). Under ``torch.export`` (fixed shapes) constants, of the same float32
    arithmetic: the program then carries no index arithmetic that a quantizer could turn into floats."""
    if torch.compiler.is_compiling():
        return _constant_taps(int(length), int(size), int(extent), device)
    index = torch.arange(size, device=device)
    position = ((index + 0.5) * (length / extent) - 0.5).clamp(min=0)
    low = position.floor()
    weight = position - low
    last = length.long() - 1
    low = low.long().clamp(max=last)
    return low, (low + 1).clamp(max=last), weight


def _constant_taps(length: int, size: int, extent: int, device: torch.device):
    scale = np.float32(length) / np.float32(extent)
    position = np.maximum((np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5),
                          np.float32(0))
    low = np.floor(position)
    weight = position - low
    low = np.minimum(low.astype(np.int64), length - 1)
    return (torch.from_numpy(low).to(device), torch.from_numpy(np.minimum(low + 1, length - 1)).to(device),
            torch.from_numpy(weight).to(device))


def inside_mask(size: Sequence[int] | Sequence[torch.Tensor], extent: Sequence[int] | Sequence[torch.Tensor],
                device: torch.device) -> torch.Tensor:
    """``(size[0], size[1])`` float mask: 1 on the first ``extent`` rows and columns, 0 elsewhere."""
    rows = (torch.arange(size[0], device=device) < extent[0]).float()
    cols = (torch.arange(size[1], device=device) < extent[1]).float()
    return rows[:, None] * cols


def resize(x: torch.Tensor, size: Sequence[int] | Sequence[torch.Tensor],
           extent: Sequence[int] | Sequence[torch.Tensor] | None = None, columns_first: bool = False) -> torch.Tensor:
    """Bilinear resize of ``(N, C, H, W)`` (any dtype; float out) to ``size``, sampling as
    ``F.interpolate(mode="bilinear", align_corners=False)`` (torchvision's detection transform) does,
    written with gathers. With ``extent``, the image fills only the first ``extent`` rows and columns,
    the rest is zeros.

    ONNX's ``Resize`` and ``Pad`` would leave the work to each runtime: ONNX Runtime rounds the
    sampling positions differently (inputs 2e-6 apart, which deep networks amplify), and OpenVINO
    2026.4's CPU plugin fails outright when a size or padding is computed from the input. Gathers and
    arithmetic run alike in PyTorch and every runtime. Rows are gathered first, in the input's dtype
    (a uint8 image is cast to float only at the output's height), unless ``columns_first``: gathering
    along the last axis is the slow one, so an enlargement gathers columns while the rows are still few.
    """
    padded = extent is not None
    extent = size if extent is None else extent
    height, width = x.shape[-2:] if torch.compiler.is_compiling() else image_size(x)  # fixed under torch.export
    rows_low, rows_high, row_weight = _taps(height, size[0], extent[0], x.device)
    cols_low, cols_high, col_weight = _taps(width, size[1], extent[1], x.device)
    if columns_first:
        x = _columns(x, cols_low, cols_high, col_weight)
        top, bottom = x.index_select(-2, rows_low), x.index_select(-2, rows_high)
        x = top + (bottom - top) * row_weight[:, None]
    else:
        top, bottom = x.index_select(-2, rows_low).float(), x.index_select(-2, rows_high).float()
        x = _columns(top + (bottom - top) * row_weight[:, None], cols_low, cols_high, col_weight)
    return x * inside_mask(size, extent, x.device) if padded else x


def _columns(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x`` (float out) sampled along its last axis between columns ``low`` and ``high``. Traced for ONNX, the
    columns are gathered as rows of the transposed image: ONNX Runtime gathers along the last axis element by
    element, and this takes the resize of a 480x640 image to the demo detector's 192x192 from 2.8 to 0.9 ms
    (OpenVINO 1.0 to 1.5 ms; both 2 threads, AMD EPYC). The arithmetic is the same, and so are the values."""
    if not torch.jit.is_tracing():
        left, right = x.index_select(-1, low).float(), x.index_select(-1, high).float()
        return left + (right - left) * weight
    x = x.transpose(-1, -2)
    left, right = x.index_select(-2, low).float(), x.index_select(-2, high).float()
    return (left + (right - left) * weight[:, None]).transpose(-1, -2)


def longer_side_extent(images: torch.Tensor, side: int) -> torch.Tensor | list[int]:
    """The ``(height, width)`` (a long tensor) that ``images`` fill when resized so that their longer side
    is ``side``, the aspect ratio kept. Under ``torch.export``, whose shapes are fixed, Python integers of the
    same float32 arithmetic: a tensor would make the slices that use them data-dependent."""
    if torch.compiler.is_compiling():
        height, width = (np.float32(n) for n in images.shape[-2:])
        scale = np.float32(side) / max(height, width)
        return [max(int(np.round(n * scale)), 1) for n in (height, width)]
    size = image_size(images)
    return (size * (side / size.max())).round().clamp(min=1).long()


class ImageInput(nn.Module):
    """uint8 RGB ``(N, 3, H, W)`` -> ``(x / 255 - mean) / std`` as float, optionally resized first.

    Args:
        mean: Per-channel mean of the [0, 1] images the weights expect.
        std: Per-channel standard deviation.
        owner: The network's name, for error messages.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], owner: str):
        super().__init__()
        self.owner = owner
        # not in the state dict: they follow from the configuration, not from training
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, size: Sequence[int] | None = None,
                extent: Sequence[int] | Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Normalized images; with ``size``, resized to it first (:func:`resize`; the pixels are resized,
        not the normalized values, which costs the same arithmetic on fewer of them). With ``extent``
        the image fills only that much of ``size`` and the rest is zeros (the mean colour)."""
        if not torch.jit.is_tracing():
            check_images(images, self.owner)
        # torchvision's arithmetic (GeneralizedRCNNTransform.normalize), so that its weights give its numbers
        if size is None:
            return (images.float() / 255 - self.mean) / self.std
        x = (resize(images, size, extent) / 255 - self.mean) / self.std
        return x if extent is None else x * inside_mask(size, extent, x.device)
