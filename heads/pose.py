"""Top-down keypoint heatmaps on any Kestrel pyramid: a SimpleBaseline head and its heatmap codec.

The head is SimpleBaseline's (Xiao et al. 2018): transposed convolutions that upsample the deepest
level to stride 4, then a 1x1 convolution to one heatmap per keypoint. It was chosen over an FPN-fused
stride-4 head because it is what the published efficient-backbone results use (mmpose's MobileNetV2
256x192, COCO AP 64.8), so those numbers are comparable, and because it needs only the deepest level,
which every pyramid has: the number of upsampling steps follows that level's stride (three at 32, two
at a dilated 16), so it works on every backbone.

The codec turns keypoints into Gaussian target heatmaps and heatmaps back into keypoints with
DARK's sub-pixel refinement (Zhang et al. 2020: Gaussian modulation, then a second-order Taylor
expansion of the log-heatmap at its maximum). Coordinates are continuous pixel coordinates whose
integer values are pixel centres (OpenCV's convention); heatmap pixel ``j`` covers input pixels
``[j * s, (j + 1) * s)``, so ``x_heatmap = (x + 0.5) / s - 0.5`` and a horizontal flip of the input
is exactly a flip of the heatmap (no half-pixel shift).

The decoding runs inside the network, so an exported model returns keypoints, not heatmaps: flip
test, DARK refinement and the map to crop pixels are tensor operations that trace into ONNX.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from backbones import Pyramid

from ._input import ImageInput


def flip_index(names: Sequence[str]) -> list[int]:
    """For each keypoint, the index of its mirror image: ``left_*`` <-> ``right_*`` (any position of
    the word ``left``/``right`` in the name); keypoints without a partner map to themselves.

    Raises:
        ValueError: a ``left`` keypoint whose ``right`` partner is missing (or vice versa); flipping
            would then teach the model the wrong side.
    """
    position = {name: i for i, name in enumerate(names)}
    index = []
    for name in names:
        words = name.split("_")
        if "left" in words or "right" in words:
            mirror = "_".join({"left": "right", "right": "left"}.get(w, w) for w in words)
            if mirror not in position:
                raise ValueError(f"keypoint {name!r} has no mirror keypoint {mirror!r} among {list(names)}")
            index.append(position[mirror])
        else:
            index.append(position[name])
    return index


def to_heatmap(points: torch.Tensor, stride: float) -> torch.Tensor:
    """Input-pixel coordinates ``(..., 2)`` to heatmap coordinates (see the module docstring)."""
    return (points + 0.5) / stride - 0.5


def from_heatmap(points: torch.Tensor, stride: float) -> torch.Tensor:
    """Heatmap coordinates ``(..., 2)`` to input-pixel coordinates."""
    return (points + 0.5) * stride - 0.5


def gaussian_heatmaps(
    points: torch.Tensor, visible: torch.Tensor, size: tuple[int, int], sigma: float = 2.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target heatmaps: an unnormalized Gaussian (peak 1) at each keypoint, in heatmap coordinates.

    Args:
        points: ``(..., K, 2)`` keypoints ``(x, y)`` in heatmap coordinates (sub-pixel).
        visible: ``(..., K)`` whether each keypoint is labelled.
        size: Heatmap ``(height, width)``.
        sigma: Gaussian standard deviation in heatmap pixels.

    Returns:
        Heatmaps ``(..., K, height, width)`` and weights ``(..., K)``: 1 for labelled keypoints inside
        the heatmap, 0 otherwise (their heatmaps are all zero).
    """
    height, width = size
    x, y = points[..., 0], points[..., 1]
    xs = torch.arange(width, dtype=points.dtype, device=points.device)
    ys = torch.arange(height, dtype=points.dtype, device=points.device)
    heatmaps = torch.exp(
        -((xs - x[..., None, None]) ** 2 + (ys[:, None] - y[..., None, None]) ** 2) / (2 * sigma**2)
    )
    inside = (x >= -0.5) & (x <= width - 0.5) & (y >= -0.5) & (y <= height - 0.5)
    weights = (visible.bool() & inside).to(points.dtype)
    return heatmaps * weights[..., None, None], weights


def gaussian_blur(heatmaps: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """``(M, 1, H, W)`` maps smoothed as torchvision's ``gaussian_blur`` does (reflect padding, OpenCV's
    sigma for the size), with a fixed one-channel kernel: torchvision expands its kernel to the
    channel count read at run time, which the ONNX exporter cannot take."""
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    x = torch.linspace(-(kernel_size - 1) / 2, (kernel_size - 1) / 2, kernel_size, device=heatmaps.device)
    weights = torch.exp(-0.5 * (x / sigma) ** 2)
    weights = weights / weights.sum()
    half = kernel_size // 2
    padded = F.pad(heatmaps, (half, half, half, half), mode="reflect")
    return F.conv2d(padded, (weights[:, None] * weights[None])[None, None].to(heatmaps.dtype))


def decode_heatmaps(heatmaps: torch.Tensor, blur_kernel: int | None = 11) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints from heatmaps: the maximum, refined to sub-pixel accuracy as DARK does.

    The heatmaps are smoothed by a Gaussian (``blur_kernel``; OpenCV's sigma for that size, 2 for
    11, the training sigma), their log expanded to second order around the maximum, and the maximum
    moved to the expansion's stationary point (by at most one pixel). A peak closer to the border
    than half the kernel is refined on the unsmoothed heatmap: smoothing there, with any padding,
    would pull it toward or away from the edge. A Gaussian target decodes back to its centre except
    on the outermost ring of pixels, where there is nothing to refine with.

    Args:
        heatmaps: ``(N, K, H, W)``.
        blur_kernel: Odd size of DARK's modulation kernel; None skips smoothing.

    Returns:
        Coordinates ``(N, K, 2)`` in heatmap pixels and scores ``(N, K)`` (the heatmaps' maxima).
    """
    n, k, height, width = heatmaps.shape
    flat = heatmaps.reshape(n, k, -1)
    scores, argmax = flat.max(-1)
    x = (argmax % width).long()
    y = torch.div(argmax, width, rounding_mode="floor").long()
    smooth = heatmaps.float()
    if blur_kernel:
        smooth = gaussian_blur(smooth.reshape(-1, 1, height, width), blur_kernel).reshape(heatmaps.shape)
        # keep each heatmap's peak height, as DARK does
        smooth = smooth * (scores[..., None, None] / smooth.amax((-2, -1), keepdim=True).clamp_min(1e-12))
        half = blur_kernel // 2
        near_border = (x < half) | (x >= width - half) | (y < half) | (y >= height - half)
        smooth = torch.where(near_border[..., None, None], heatmaps.float(), smooth)
    log = smooth.clamp_min(1e-10).log()
    pad = F.pad(log, (1, 1, 1, 1), mode="replicate").reshape(n, k, -1)
    stride = width + 2

    def at(dx: int, dy: int) -> torch.Tensor:
        # integer tensors rather than Python numbers: ExecuTorch's XNNPACK quantizer turns every number added to or
        # multiplied by a tensor into a float tensor (executorch 1.5.1, _convert_scalars_to_attrs), which would
        # make this index float in an INT8 phone file
        rows = (y + torch.full_like(y, 1 + dy)) * torch.full_like(y, stride)
        return pad.gather(-1, (rows + x + torch.full_like(x, 1 + dx))[..., None])[..., 0]

    centre = at(0, 0)
    dx = 0.5 * (at(1, 0) - at(-1, 0))
    dy = 0.5 * (at(0, 1) - at(0, -1))
    dxx = at(1, 0) - 2 * centre + at(-1, 0)
    dyy = at(0, 1) - 2 * centre + at(0, -1)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy**2
    # refine only at a proper maximum away from the border (the Hessian negative definite)
    ok = (det > 1e-12) & (dxx < 0) & (x > 0) & (x < width - 1) & (y > 0) & (y < height - 1)
    safe = torch.where(ok, det, torch.ones_like(det))
    offset_x = torch.where(ok, -(dyy * dx - dxy * dy) / safe, torch.zeros_like(det)).clamp(-1, 1)
    offset_y = torch.where(ok, -(dxx * dy - dxy * dx) / safe, torch.zeros_like(det)).clamp(-1, 1)
    coords = torch.stack([x + offset_x, y + offset_y], -1)
    return coords, scores


class SimpleBaseline(nn.Module):
    """SimpleBaseline heatmap head over a pyramid's deepest level, with its decoding.

    Inputs are uint8 RGB person crops ``(N, 3, H, W)``, H and W multiples of the backbone's deepest
    stride. Training returns the stride-4 heatmaps ``(N, K, H / 4, W / 4)``. Evaluation returns
    ``{"keypoints": (N, K, 3)}``: ``x, y`` in the crop's pixels (pixel centres at integers) and the
    heatmap peak as score, decoded with DARK and, with ``flip_test``, from heatmaps averaged with the
    mirrored crop's (left and right swapped): the exported model's interface.

    Args:
        backbone: Any pyramid; only its deepest level is used (stride 8, 16 or 32), e.g.
            ``Backbone("mobilenet_v2", levels=[32])``.
        keypoint_names: The keypoints, in heatmap order; ``left_*``/``right_*`` names give the flip pairs.
        deconv_channels: Width of each transposed convolution (SimpleBaseline: 256).
        deconv_kernel: Kernel size of the transposed convolutions (4, 3 or 2).
        flip_test: Average each crop's heatmaps with its mirror image's when evaluating.
        blur_kernel: Size of DARK's smoothing kernel when decoding (None: no smoothing).
        image_mean: Input normalization; the backbone's if None.
        image_std: As ``image_mean``.
    """

    # sized by the keypoint count: what fine-tuning on other keypoints starts afresh (tasks: init_from)
    label_layers = ("final.",)

    stride = 4

    def __init__(
        self,
        backbone: Pyramid,
        keypoint_names: Sequence[str],
        deconv_channels: int = 256,
        deconv_kernel: int = 4,
        flip_test: bool = True,
        blur_kernel: int | None = 11,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ):
        super().__init__()
        deepest = backbone.feature_info[-1]
        if deepest.stride < self.stride or deepest.stride & (deepest.stride - 1):
            raise ValueError(
                f"the pose head upsamples the deepest level to stride 4; {deepest.name} has stride "
                f"{deepest.stride} (must be a power of two, at least 4)"
            )
        if not keypoint_names:
            raise ValueError("the pose head needs at least one keypoint name")
        if blur_kernel is not None and (blur_kernel < 3 or blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel must be an odd size of at least 3 (or None), got {blur_kernel}")
        num_keypoints = len(keypoint_names)
        padding, output_padding = {4: (1, 0), 3: (1, 1), 2: (0, 0)}[deconv_kernel]
        layers: list[nn.Module] = []
        channels = deepest.channels
        for _ in range(int(math.log2(deepest.stride // self.stride))):
            layers += [
                nn.ConvTranspose2d(channels, deconv_channels, deconv_kernel, stride=2, padding=padding,
                                   output_padding=output_padding, bias=False),
                nn.BatchNorm2d(deconv_channels),
                nn.ReLU(inplace=True),
            ]
            channels = deconv_channels
        self.backbone = backbone
        self.level = deepest.name
        self.input_stride = deepest.stride
        self.deconv = nn.Sequential(*layers)
        self.final = nn.Conv2d(channels, num_keypoints, 1)
        self.num_keypoints = num_keypoints
        self.keypoint_names = list(keypoint_names)
        self.flip_index = flip_index(self.keypoint_names)
        self.flip_test = flip_test
        self.blur_kernel = blur_kernel
        self.input = ImageInput(image_mean or backbone.mean, image_std or backbone.std, "SimpleBaseline")
        for m in self.deconv.modules():  # SimpleBaseline's initialization
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
        nn.init.normal_(self.final.weight, std=0.001)
        nn.init.zeros_(self.final.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        x = self.input(images)
        height, width = images.shape[-2:]
        if not torch.jit.is_tracing() and (height % self.input_stride or width % self.input_stride):
            raise ValueError(f"pose input {height}x{width} must be a multiple of the backbone's stride "
                             f"{self.input_stride}")
        if self.training:
            return self.heatmaps(x)
        if self.flip_test:  # one batch of the crops and their mirror images
            heatmaps = self.heatmaps(torch.cat([x, x.flip(-1)]))
            plain, mirrored = heatmaps.chunk(2)
            heatmaps = (plain + mirrored.flip(-1)[:, self.flip_index]) / 2
        else:
            heatmaps = self.heatmaps(x)
        coords, scores = decode_heatmaps(heatmaps, self.blur_kernel)
        xy = from_heatmap(coords, self.stride)
        return {"keypoints": torch.cat([xy, scores[..., None]], -1)}

    def heatmaps(self, x: torch.Tensor) -> torch.Tensor:
        """Stride-4 heatmaps of normalized crops."""
        return self.final(self.deconv(self.backbone(x)[self.level]))
