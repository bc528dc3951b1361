"""Per-class non-maximum suppression over a batch, as ONNX's ``NonMaxSuppression`` defines it.

In PyTorch it runs torchvision's ``batched_nms`` image by image; exported, it becomes the one ONNX
operator (which ONNX Runtime and OpenVINO implement), so the detector's graph keeps its NMS and its
data-dependent number of boxes instead of the frozen sizes that tracing torchvision's post-processing
gives (torchvision's SSDLite traced that way returned 256 detections where eager gave 272).
Both suppress a box whose IoU with a higher-scoring box of its class exceeds the threshold and drop
scores at or below ``score_threshold``.
"""

from __future__ import annotations

import numpy
import torch
from torchvision.ops import batched_nms as torchvision_batched_nms


def _rank_within_class(labels: torch.Tensor) -> torch.Tensor:
    """For a score-sorted list of labels, each entry's position among the entries of its label."""
    order = torch.argsort(labels, stable=True)
    grouped = labels[order]
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(len(labels), device=labels.device) - torch.searchsorted(grouped, grouped)
    return rank


class _BatchedNMS(torch.autograd.Function):
    @staticmethod
    def forward(ctx, boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> torch.Tensor:
        kept = torch.full_like(scores, -1.0)
        for image, (image_boxes, image_scores) in enumerate(zip(boxes, scores)):
            label, box = torch.nonzero(image_scores > score_threshold, as_tuple=True)
            keep = torchvision_batched_nms(image_boxes[box], image_scores[label, box], label, iou_threshold)
            keep = keep[_rank_within_class(label[keep]) < max_per_class]  # keep is sorted by score
            kept[image, label[keep], box[keep]] = image_scores[label[keep], box[keep]]
        return kept

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_threshold: float, score_threshold: float):
        selected = g.op(  # (M, 3) rows (image, class, box): the index of each kept score in `scores`
            "NonMaxSuppression", boxes, scores, g.op("Constant", value_t=torch.tensor([max_per_class])),
            g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_threshold], dtype=torch.float32)),
        )
        empty = g.op("ConstantOfShape", g.op("Shape", scores), value_t=torch.tensor([-1.0], dtype=torch.float32))
        return g.op("ScatterND", empty, selected, g.op("GatherND", scores, selected))


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, max_per_class: int, iou_threshold: float,
                score_threshold: float) -> torch.Tensor:
    """Per image and class, the scores of the boxes NMS keeps.

    Args:
        boxes: ``(N, B, 4)`` corner boxes ``x1, y1, x2, y2``, shared by every class.
        scores: ``(N, C, B)`` each box's score per class.
        max_per_class: Most boxes kept per image and class.
        iou_threshold: A box overlapping a better one of its class by more IoU than this is dropped.
        score_threshold: Scores at or below are dropped first.

    Returns:
        ``(N, C, B)``: ``scores`` where NMS keeps the box for the class, -1 elsewhere. Exported, ONNX's
        ``NonMaxSuppression`` and a scatter of the scores it selects: a handful of nodes, where indexing
        with its ``(image, class, box)`` rows would trace into dozens.
    """
    return _BatchedNMS.apply(boxes, scores, max_per_class, iou_threshold, score_threshold)


def pairwise_overlap(boxes: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """``(K, K)`` float: 1 where box ``j`` overlaps box ``i`` by more IoU than ``iou_threshold`` ([0, 1]), else 0.

    The IoU has the arithmetic of torchvision's NMS kernel (intersection over ``area_i + area_j - intersection``, in
    the boxes' dtype), so that a pair at the threshold falls on the same side. The test is arithmetic rather than a
    comparison, so that XNNPACK, which has no comparison operator, runs it (see :func:`fixed_shape_nms`): the sign of
    ``IoU - threshold`` is exact, and dividing it by the dtype's smallest normal number (2^-126 in float32) sends
    every positive difference to at least 1.
    A union of 0 (two empty boxes), whose IoU torchvision finds NaN and so not above the threshold, gives 0 here.
    """
    tiny = torch.finfo(boxes.dtype).tiny
    x1, y1, x2, y2 = boxes.unbind(-1)
    area = (x2 - x1) * (y2 - y1)
    width = (torch.minimum(x2[:, None], x2[None]) - torch.maximum(x1[:, None], x1[None])).clamp(min=0)
    height = (torch.minimum(y2[:, None], y2[None]) - torch.maximum(y1[:, None], y1[None])).clamp(min=0)
    inter = width * height
    union = (area[:, None] + area[None] - inter).clamp(min=tiny)
    return ((inter / union - iou_threshold) / tiny).clamp(0, 1)


def fixed_shape_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor,
                    iou_threshold: float) -> torch.Tensor:
    """Greedy per-class NMS over ``K`` candidates with every shape fixed, for graphs that ``torch.export`` traces
    (LiteRT, ExecuTorch, Core ML have no NMS operator that takes a data-dependent box count).

    The result is exactly torchvision's ``batched_nms`` on the valid candidates, not Fast-NMS's approximation: the
    candidates, given best first (as ``topk`` returns them; sorting is no core ATen operator), are visited in
    order, and each one that is valid and not yet suppressed is kept and suppresses the later ones of its class it
    overlaps. The visit is a loop of ``K`` steps, unrolled when traced; ``K`` is the caller's candidate budget.

    Every step is arithmetic on 0/1 floats (two slices, a subtraction, a maximum) and so is the ``(K, K)`` matrix
    of who suppresses whom: XNNPACK, the CPU backend of ExecuTorch and LiteRT, has no boolean or comparison
    operators, and the runtimes' own kernels for those took 2.6 ms of the demo detector's 11.8 ms in ExecuTorch
    (300 candidates, AMD EPYC); this form runs inside XNNPACK in about 0.3 ms.

    Args:
        boxes: ``(K, 4)`` corner boxes ``x1, y1, x2, y2``.
        scores: ``(K,)``, in descending order.
        labels: ``(K,)`` class of each box (integers below 2^24): boxes of different classes never suppress each
            other.
        valid: ``(K,)`` bool: candidates that take part (padding and scores under the threshold do not).
        iou_threshold: A box overlapping a kept one of its class by more IoU than this (in ``[0, 1]``) is dropped.

    Returns:
        ``(K,)`` bool: which candidates NMS keeps.
    """
    count = boxes.shape[0]
    label = labels.float()
    same_class = (1 - (label[:, None] - label[None]) ** 2).clamp(min=0)
    later = torch.from_numpy(numpy.triu(numpy.ones((count, count), numpy.float32), 1)).to(boxes.device)  # a constant
    suppresses = pairwise_overlap(boxes, iou_threshold) * same_class * later  # row i: the boxes i suppresses if kept
    suppressed = (~valid).float()[None]  # (1, K): 1 once suppressed
    for i in range(count):
        # where i is suppressed the row minus 1 is at most 0 and changes nothing; else its row is added
        suppressed = torch.maximum(suppressed, suppresses[i:i + 1] - suppressed[:, i:i + 1])
    return suppressed[0] == 0
