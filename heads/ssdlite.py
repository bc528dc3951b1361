"""SSDLite detection on any Kestrel pyramid, on torchvision's SSD machinery.

SSDLite (MobileNetV2 paper, section 6.2; MobileNetV3 paper, section 6.3) is SSD with depthwise-separable
prediction heads and extra layers. Everything but the wiring is torchvision's: ``SSD`` (matching,
box coding, 3:1 hard-negative mining), ``DefaultBoxGenerator``, ``SSDLiteHead`` and the extra blocks.
The head sizes itself from the backbone's ``feature_info``.

Inference is torchvision's ``SSD.postprocess_detections`` and ``transform.postprocess`` written for a
whole batch and an ONNX graph: box decoding, the top candidates per class, per-class NMS (ONNX's
``NonMaxSuppression``, see ``heads._nms``), the best ``detections_per_img`` per image, boxes mapped
to the input's pixels. Its detections equal torchvision's on the same weights (tested).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead

from backbones import BackboneWithNeck, Pyramid, SSDLiteExtra

from ._input import ImageInput, check_images, image_size
from ._nms import batched_nms, fixed_shape_nms

_IGNORED = "num_batches_tracked"
_TORCHVISION_LAYOUT = (
    "torchvision's SSDLite fits backbone mobilenet_v3_large with levels [16, 32], feature_location expansion "
    "and options {reduced_tail: true} (torchvision reduces the tail when trained without ImageNet backbone "
    "weights, as its COCO weights were)"
)


class SSDLite(SSD):
    """SSDLite over the deepest ``num_levels`` levels of ``backbone``, extended by SSDLite's extra layers.

    Defaults are torchvision's ``ssdlite320_mobilenet_v3_large``: 320x320 input, aspect ratios 2 and 3
    on every level, default-box scales 0.2-0.95, batch norm with eps 0.001 / momentum 0.03, score
    threshold 0.001, NMS IoU 0.55, 300 detections.

    Inputs are uint8 RGB images: a batch ``(N, 3, H, W)`` or a list of ``(3, H, W)`` of any sizes; the
    model scales, normalizes and resizes them to ``image_size`` itself. Training (with ``targets``,
    boxes in the input's pixels) returns ``{"bbox_regression", "classification"}`` losses. Evaluation
    returns ``boxes`` ``(N, D, 4)`` as ``x1, y1, x2, y2`` in each input's pixels, ``scores`` ``(N, D)``
    in descending order, ``labels`` ``(N, D)`` (1..num_classes; 0 on padding rows) and
    ``num_detections`` ``(N,)``, with ``D = detections_per_img``: the exported model's interface.

    Args:
        backbone: Any Kestrel pyramid. MobileNetV3 as in the paper: ``levels=[16, 32]`` with
            ``feature_location="expansion"`` (C4 at the 672-channel expansion).
        num_classes: Object classes, background not counted (torchvision's ``num_classes`` - 1).
        image_size: Side of the square input the detector resizes to.
        num_levels: How many of the backbone's deepest levels feed the head.
        extra_channels: Output channels of the extra blocks (before ``width_mult``).
        width_mult: Channel multiplier of the extra blocks.
        aspect_ratios: Aspect ratios of the default boxes on every level (besides 1).
        min_ratio: Scale of the smallest default boxes, relative to the input.
        max_ratio: Scale of the largest default boxes.
        image_mean: Input normalization; the backbone's (ImageNet's) if None. torchvision's SSDLite
            uses 0.5.
        image_std: As ``image_mean``.
        score_thresh: Detections scoring below are dropped.
        nms_thresh: IoU threshold of the per-class NMS.
        detections_per_img: Detections kept per image.
        topk_candidates: Candidates per class before NMS.
        iou_thresh: IoU for a default box to match a ground-truth box.
        positive_fraction: Positives among the boxes the classification loss sees (0.25: 3:1 mining).
    """

    # sized by the class count: what fine-tuning on other classes starts afresh (tasks: init_from)
    label_layers = ("head.classification_head.",)

    def __init__(
        self,
        backbone: Pyramid,
        num_classes: int,
        image_size: int = 320,
        num_levels: int = 2,
        extra_channels: Sequence[int] = (512, 256, 256, 128),
        width_mult: float = 1.0,
        aspect_ratios: Sequence[float] = (2.0, 3.0),
        min_ratio: float = 0.2,
        max_ratio: float = 0.95,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        score_thresh: float = 0.001,
        nms_thresh: float = 0.55,
        detections_per_img: int = 300,
        topk_candidates: int = 300,
        iou_thresh: float = 0.5,
        positive_fraction: float = 0.25,
    ):
        if not 1 <= num_levels <= len(backbone.feature_info):
            raise ValueError(
                f"num_levels must be between 1 and the backbone's {len(backbone.feature_info)} levels, got {num_levels}"
            )
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
        neck = SSDLiteExtra(backbone.feature_info[-num_levels:], extra_channels, width_mult, norm_layer=norm_layer)
        anchors = DefaultBoxGenerator([list(aspect_ratios)] * len(neck.feature_info), min_ratio, max_ratio)
        head = SSDLiteHead(
            neck.feature_info.channels(), anchors.num_anchors_per_location(), num_classes + 1, norm_layer
        )
        super().__init__(
            BackboneWithNeck(backbone, neck),
            anchors,
            (image_size, image_size),
            num_classes + 1,
            image_mean=list(image_mean or backbone.mean),
            image_std=list(image_std or backbone.std),
            head=head,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            iou_thresh=iou_thresh,
            topk_candidates=topk_candidates,
            positive_fraction=positive_fraction,
        )
        self.num_classes = num_classes
        self.image_size = image_size
        self.input = ImageInput(self.transform.image_mean, self.transform.image_std, "SSDLite")
        self.fixed_candidates: int | None = None  # see fixed_shapes()

    @contextlib.contextmanager
    def fixed_shapes(self, candidates: int | None = None):
        """Within this context the post-processing has no data-dependent shape, so that ``torch.export`` traces the
        whole detector for runtimes without an NMS operator (LiteRT, ExecuTorch, Core ML): the ``candidates`` best
        class scores of each image (default ``detections_per_img``) go through :func:`fixed_shape_nms`.

        Its detections are the usual ones, best first, up to the budget: NMS keeps or drops a box by the boxes that
        score higher only, so the kept boxes among the best ``candidates`` are exactly the first of the usual
        result; when NMS drops some of them, fewer rows are filled (``num_detections`` says how many)."""
        previous = self.fixed_candidates
        self.fixed_candidates = candidates or self.detections_per_img
        try:
            yield self
        finally:
            self.fixed_candidates = previous

    def forward(self, images: torch.Tensor | list[torch.Tensor], targets: list[dict[str, torch.Tensor]] | None = None):
        if self.training:
            if targets is None:
                raise ValueError("SSDLite in training mode needs targets ({'boxes', 'labels'} per image)")
            for image in images:
                check_images(image[None], "SSDLite")
            # torchvision's SSD: normalization, default-box matching and the losses
            return super().forward([image.float() / 255 for image in images], targets)
        return self.detect(images)

    def detect(self, images: torch.Tensor | list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Detections of uint8 images, padded to ``detections_per_img`` per image (see the class docstring)."""
        side = self.image_size
        if isinstance(images, torch.Tensor):
            scale = image_size(images).flip(0).repeat(2) / side  # w, h, w, h: input pixels per detector pixel
            resized = torch.jit.is_tracing() or tuple(images.shape[-2:]) != (side, side)
            x = self.input(images, (side, side) if resized else None)
        else:  # torchvision's list of images of any sizes, each resized on its own
            scale = (torch.stack([image_size(image[None]) for image in images]).flip(-1) / side).repeat(1, 2)[:, None]
            x = torch.cat([self.input(image[None], (side, side)) for image in images])
        features = list(self.backbone(x).values())
        outputs = self.head(features)
        return self.postprocess(outputs["bbox_regression"], outputs["cls_logits"], self.default_boxes(x, features),
                                scale)

    def default_boxes(self, x: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """The anchors (torchvision's ``DefaultBoxGenerator``) of the ``image_size`` square and these feature maps,
        made once per feature-map sizes, dtype and device and kept: an exported graph holds them as a constant
        rather than computing them at every call (2.6 ms of the demo detector's 19 ms in ONNX Runtime)."""
        key = (tuple(tuple(int(n) for n in f.shape[-2:]) for f in features), x.dtype, x.device, self.image_size)
        cache = self.__dict__.setdefault("_default_boxes", {})  # not a buffer: no state-dict entry
        if key in cache:
            return cache[key]
        boxes = self.anchor_generator(ImageList(x[:1], [(self.image_size,) * 2]), features)[0]
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):  # (tracers' tensors are not values)
            cache[key] = boxes.detach()
        return boxes

    def postprocess(self, regression: torch.Tensor, logits: torch.Tensor, anchors: torch.Tensor,
                    scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoded, suppressed detections of a batch, boxes multiplied by ``scale`` (``(4,)`` or ``(N, 1, 4)``:
        ``w, h, w, h`` input pixels per detector pixel)."""
        count = int(regression.shape[1])  # the anchors: a constant of the network, also in a traced graph
        scores = F.softmax(logits, dim=-1)[..., 1:].transpose(1, 2)  # (N, classes, boxes), background dropped
        if self.fixed_candidates is not None:
            return self._fixed_shape_detections(regression, anchors, scores, scale)
        boxes = self._decode(regression, anchors)
        # torchvision keeps the topk_candidates best boxes of each class above the score threshold
        kept = batched_nms(boxes, self._class_candidates(scores), min(self.topk_candidates, count), self.nms_thresh,
                           self.score_thresh)
        score, index = kept.flatten(1).topk(min(self.detections_per_img, int(kept.shape[1]) * count), dim=1)
        found = score > self.score_thresh
        label = torch.div(index, count, rounding_mode="trunc")  # (indices are not negative: one Div when exported)
        boxes = boxes.gather(1, (index - label * count)[..., None].repeat(1, 1, 4))
        return {
            "boxes": boxes * scale * found[..., None],
            "scores": score * found,
            "labels": torch.where(found, label + 1, 0),
            "num_detections": found.sum(1),
        }

    def _decode(self, regression: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """``(N, M, 4)`` boxes in input pixels from the regression ``(N, M, 4)`` of ``M`` anchors (``(M, 4)`` or
        ``(N, M, 4)``): torchvision's ``BoxCoder.decode_single`` and ``clip_boxes_to_image``, the same arithmetic on
        ``(x, y)`` pairs rather than on each coordinate alone, which gives the same values (tested bit for bit) in
        fewer, larger nodes of an exported graph."""
        anchors = anchors.to(regression.dtype)
        size = anchors[..., 2:] - anchors[..., :2]
        centre = anchors[..., :2] + 0.5 * size
        codes = regression / torch.tensor(self.box_coder.weights, dtype=regression.dtype, device=regression.device)
        shift, scale = codes[..., :2], codes[..., 2:].clamp(max=self.box_coder.bbox_xform_clip)
        centre = shift * size + centre
        half = 0.5 * (torch.exp(scale) * size)
        if torch.jit.is_tracing():  # for ONNX: one node, where a stack and a flattening are seven
            return torch.cat([centre - half, centre + half], -1).clamp(0, self.image_size)
        # stacked, not concatenated: XNNPACK's quantizer would quantize a concatenation's inputs (box arithmetic)
        return torch.stack([centre - half, centre + half], -2).flatten(-2).clamp(0, self.image_size)

    def _class_candidates(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` ``(N, classes, boxes)`` with all but the ``topk_candidates`` best of each class set to 0."""
        best, index = scores.topk(min(self.topk_candidates, scores.shape[-1]), dim=-1)
        return torch.zeros_like(scores).scatter(-1, index, best)

    def _fixed_shape_detections(self, regression: torch.Tensor, anchors: torch.Tensor, scores: torch.Tensor,
                                scale: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`postprocess` with every shape fixed (:meth:`fixed_shapes`): only the ``K`` best class scores of each
        image are decoded and suppressed.

        Each of an image's ``K`` best class scores is among the ``K`` best of its class, so when ``K`` is within
        ``topk_candidates`` the per-class cut cannot change them and is skipped."""
        n, classes, count = scores.shape
        budget = min(self.fixed_candidates, classes * count)
        if budget > min(self.topk_candidates, count):
            scores = self._class_candidates(scores)
        score, index = scores.flatten(1).topk(budget, dim=1)  # (N, K): the best class scores of each image
        label, box = torch.div(index, count, rounding_mode="floor"), index % count
        boxes = self._decode(regression.gather(1, box[..., None].expand(-1, -1, 4)), anchors[box])
        keep = torch.stack([fixed_shape_nms(boxes[i], score[i], label[i], score[i] > self.score_thresh,
                                            self.nms_thresh) for i in range(n)])
        kept, order = torch.where(keep, score, -1.0).topk(budget, dim=1)  # kept first, best first
        found = kept > self.score_thresh
        rows = min(self.detections_per_img, budget)
        found, order = found[:, :rows], order[:, :rows]
        boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4))
        pad = self.detections_per_img - rows  # the usual (N, detections_per_img) outputs
        return {
            "boxes": F.pad(boxes * scale * found[..., None], (0, 0, 0, pad)),
            "scores": F.pad(score.gather(1, order) * found, (0, pad)),
            "labels": F.pad(torch.where(found, label.gather(1, order) + 1, 0), (0, pad)),
            "num_detections": found.sum(1),
        }

    def from_torchvision(
        self, state_dict: Mapping[str, torch.Tensor], class_ids: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Map a state dict saved from torchvision's ``ssdlite320_mobilenet_v3_large`` onto this model's keys.

        The backbone's tensors are matched in order (torchvision splits MobileNetV3 at the C4
        expansion into ``features.0``/``features.1``; Kestrel keeps torchvision's classifier layout)
        and checked name by name and shape by shape; extra layers and head keep their names.

        Args:
            state_dict: torchvision's weights.
            class_ids: Which of torchvision's classes become this model's labels 1..num_classes
                (background 0 is kept), for weights with another class layout, e.g. torchvision's
                COCO weights, indexed by COCO category id (91 classes). None keeps them as they are.

        Raises:
            ValueError: the weights do not fit this model; says what to change.
        """
        mapping = self._backbone_mapping(state_dict)
        converted = {}
        for key, value in state_dict.items():
            if key.endswith(_IGNORED) and key.startswith("backbone.features."):
                continue
            if key in mapping:
                key = mapping[key]
            elif key.startswith("backbone.extra."):
                key = "backbone.neck." + key.removeprefix("backbone.")
            converted[key] = value
        if class_ids is not None:
            converted = _select_classes(converted, [0, *class_ids])
        return converted

    def to_torchvision(self, template: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """This model's weights as a state dict of torchvision's ``ssdlite320_mobilenet_v3_large``: the inverse
        of :meth:`from_torchvision`, keyed as ``template`` (the state dict of a torchvision SSDLite with
        this model's class count, e.g. ``ssdlite320_mobilenet_v3_large(num_classes=num_classes + 1)``).

        Raises:
            ValueError: this model is not in torchvision's layout; says what to change.
        """
        mine = self.state_dict()
        mapping = self._backbone_mapping(template)
        converted = {}
        for key, value in template.items():
            if key in mapping:
                ours = mapping[key]
            elif key.endswith(_IGNORED) and key.startswith("backbone.features."):
                converted[key] = value
                continue
            elif key.startswith("backbone.extra."):
                ours = "backbone.neck." + key.removeprefix("backbone.")
            else:
                ours = key
            if ours not in mine or mine[ours].shape != value.shape:
                found = tuple(mine[ours].shape) if ours in mine else "nothing"
                raise ValueError(f"torchvision's {key} {tuple(value.shape)} has no counterpart here ({ours}: {found}): "
                                 f"{_TORCHVISION_LAYOUT}")
            converted[key] = mine[ours]
        return converted

    def _backbone_mapping(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, str]:
        """torchvision's backbone keys (``backbone.features.*``) -> this model's, matched in order and
        checked name by name and shape by shape."""
        source = [(k, v) for k, v in state_dict.items() if k.startswith("backbone.features.")]
        target = list(self.backbone.body.state_dict(prefix="backbone.body.").items())
        source = [(k, v) for k, v in source if not k.endswith(_IGNORED)]
        target = [(k, v) for k, v in target if not k.endswith(_IGNORED)]
        if len(source) != len(target):
            raise ValueError(
                f"torchvision SSDLite backbone has {len(source)} tensors, this model's {len(target)}: "
                f"{_TORCHVISION_LAYOUT}"
            )
        mapping = {}
        for (src, s), (dst, d) in zip(source, target):
            if src.rpartition(".")[2] != dst.rpartition(".")[2] or s.shape != d.shape:
                raise ValueError(f"torchvision's {src} {tuple(s.shape)} does not fit {dst} {tuple(d.shape)}: "
                                 f"{_TORCHVISION_LAYOUT}")
            mapping[src] = dst
        return mapping


def _select_classes(state: dict[str, torch.Tensor], keep: list[int]) -> dict[str, torch.Tensor]:
    """Keep the class scores ``keep`` of every classification conv (its outputs are anchor-major)."""
    state = dict(state)
    projection = re.compile(r"head\.classification_head\.module_list\.\d+\.1\.weight")  # the 1x1 conv
    for key in [k for k in state if projection.fullmatch(k)]:
        anchors = state[key.replace("classification_head", "regression_head")].shape[0] // 4
        classes = state[key].shape[0] // anchors
        if max(keep) >= classes:
            raise ValueError(f"class index {max(keep)} is out of range for weights with {classes} classes")
        for name in (key, key.removesuffix("weight") + "bias"):
            tensor = state[name]
            per_anchor = tensor.reshape(anchors, classes, *tensor.shape[1:])
            state[name] = per_anchor[:, keep].reshape(anchors * len(keep), *tensor.shape[1:])
    return state
