"""DeepLabV3+ semantic segmentation on any Kestrel pyramid, with segmentation_models_pytorch's decoder.

DeepLabV3+ (Chen et al. 2018): atrous spatial pyramid pooling (ASPP, with an image-pooling branch)
on the deepest level, upsampled and fused with the stride-4 level projected to 48 channels, refined
by separable 3x3 convolutions and upsampled to the input. The decoder and the final layer are smp's
``DeepLabV3PlusDecoder`` and ``SegmentationHead``; an optional auxiliary head (torchvision's
``FCNHead``) on a stride-16 level helps training.

Evaluated as DeepLab is: each image keeps its aspect ratio, padded rather than squashed to a square
(resized so that its longer side is the input size, padded to a square, the logits cropped back and
resized to the image before the argmax); with ``flip_test`` the class probabilities are averaged
with the mirror image's, as DeepLab's and mmsegmentation's flip test do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base.heads import SegmentationHead
from segmentation_models_pytorch.decoders.deeplabv3.decoder import DeepLabV3PlusDecoder
from torch import nn
from torchvision.models.segmentation.fcn import FCNHead

from backbones import Pyramid

from ._input import ImageInput, image_size, longer_side_extent, resize


def class_softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis (1) of ``(N, C, H, W)`` logits.

    Traced, it is written out (max, exp, sum): ONNX Runtime's ``Softmax`` on an axis other than the last
    transposes around it, 20x slower on the demo's 5x304x304 maps (14.7 against 0.7 ms for a flip-test
    batch of two, 2 threads) and a quarter of the exported segmenter's time.
    """
    if not torch.jit.is_tracing():
        return logits.softmax(1)
    exp = (logits - logits.amax(1, keepdim=True)).exp()
    return exp / exp.sum(1, keepdim=True)


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ over a backbone dilated to output stride 16 or 8, on uint8 RGB images of any size.

    Training takes crops ``(N, 3, H, W)`` and returns their logits ``{"out": (N, num_classes + 1, H, W)}``
    (and ``"aux"`` with the auxiliary head). Evaluation takes images ``(N, 3, H, W)`` of any size,
    resizes them so that the longer side is ``image_size``, pads them to a square, and returns
    ``{"labels": (N, H, W)}`` int64 at the input's size: the exported model's interface. Label 0 is
    background. :meth:`logits` is the network on normalized floats of any size (padded to a multiple
    of the output stride, as smp's decoder upsamples by fixed factors, and cropped back).

    Args:
        backbone: A pyramid with a stride-4 level and its deepest level at stride 16 or 8, e.g.
            ``Backbone("mobilenet_v2", levels=[4, 32], output_stride=16)``.
        num_classes: Object classes, background not counted.
        image_size: Side of the square that evaluation fits each image into.
        decoder_channels: Width of ASPP and decoder.
        atrous_rates: ASPP rates; (6, 12, 18) at output stride 16 and (12, 24, 36) at 8 by default,
            as in the paper.
        separable: Depthwise-separable ASPP convolutions.
        aspp_dropout: Dropout after ASPP's projection.
        aux_level: Name of the level feeding an auxiliary FCN head (e.g. ``"C4"``), or None.
        flip_test: Average each image's class probabilities with its mirror image's when evaluating
            (twice the evaluation cost).
        image_mean: Input normalization; the backbone's if None.
        image_std: As ``image_mean``.
    """

    # sized by the class count: what fine-tuning on other classes starts afresh (tasks: init_from)
    label_layers = ("segmentation_head.", "aux_head.")

    def __init__(
        self,
        backbone: Pyramid,
        num_classes: int,
        image_size: int = 513,
        decoder_channels: int = 256,
        atrous_rates: Sequence[int] | None = None,
        separable: bool = True,
        aspp_dropout: float = 0.5,
        aux_level: str | None = None,
        flip_test: bool = False,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
    ):
        super().__init__()
        info = backbone.feature_info
        deepest = info[-1]
        if deepest.stride not in (8, 16):
            raise ValueError(
                f"DeepLabV3+ needs the backbone dilated to output stride 16 or 8, but its deepest level "
                f"{deepest.name} has stride {deepest.stride}: set model.backbone.output_stride to 16 or 8"
            )
        stride4 = [level for level in info if level.stride == 4]
        if not stride4:
            raise ValueError(
                f"DeepLabV3+ needs a stride-4 level, the backbone has strides {info.strides()}: add 4 to "
                "model.backbone.levels"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        self.backbone = backbone
        self.low_level = stride4[-1].name
        self.output_stride = deepest.stride
        self.size_multiple = deepest.stride  # logits() pads to it; QAT keeps the parts open to such sizes
        rates = tuple(atrous_rates or ((6, 12, 18) if deepest.stride == 16 else (12, 24, 36)))
        # smp's decoder reads the high-resolution features at index 2 and the deepest at -1.
        channels = [0, 0, stride4[-1].channels, deepest.channels]
        self.decoder = DeepLabV3PlusDecoder(channels, 5, decoder_channels, rates, deepest.stride, separable,
                                            aspp_dropout)
        self.segmentation_head = SegmentationHead(decoder_channels, num_classes + 1, kernel_size=1, upsampling=4)
        self.aux_head = None
        if aux_level is not None:
            self.aux_head = FCNHead(info[aux_level].channels, num_classes + 1)
        self.aux_level = aux_level
        self.flip_test = flip_test
        self.num_classes = num_classes
        self.image_size = image_size
        self.input = ImageInput(image_mean or backbone.mean, image_std or backbone.std, "DeepLabV3Plus")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.training:
            return self.logits(self.input(images))
        side = self.image_size
        inside = longer_side_extent(images, side)  # the longer side fitted into the square, the rest padded
        x = self.input(images, (side, side), (inside[0], inside[1]))
        if self.flip_test:  # one batch of the squares and their mirror images; probabilities averaged
            plain, mirrored = self.logits(torch.cat([x, x.flip(-1)]), aux=False)["out"].chunk(2)
            scores = (class_softmax(plain) + class_softmax(mirrored.flip(-1))) / 2
        else:
            scores = self.logits(x, aux=False)["out"]
        scores = scores[..., : inside[0], : inside[1]]
        if torch.jit.is_tracing():  # gathers, which every runtime samples alike (see resize)
            scores = resize(scores, image_size(images).long(), columns_first=True)
        else:  # the same sampling in one kernel: 4-8x faster than gathers on full-resolution maps
            scores = F.interpolate(scores, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)
        # max's indices are argmax's (the first of equal maxima), and 9x faster on a short class dimension
        return {"labels": scores.max(1).indices}

    def logits(self, x: torch.Tensor, aux: bool = True) -> dict[str, torch.Tensor]:
        """Logits of normalized images of any size, at that size (``aux``: the auxiliary head's too)."""
        height, width = x.shape[-2:]
        stride = self.output_stride
        x = F.pad(x, (0, -width % stride, 0, -height % stride))  # zeros: the mean colour
        features = self.backbone(x)
        decoded = self.decoder([x, x, features[self.low_level], next(reversed(features.values()))])
        out = {"out": self.segmentation_head(decoded)[..., :height, :width]}
        if aux and self.aux_head is not None:
            aux = self.aux_head(features[self.aux_level])
            out["aux"] = F.interpolate(aux, size=x.shape[-2:], mode="bilinear", align_corners=False)[
                ..., :height, :width
            ]
        return out
