"""The fixed-shape NMS equals torchvision's ``batched_nms`` exactly, and ``torch.export`` traces it; lowered to
ExecuTorch's XNNPACK it still does."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torchvision.ops import batched_nms

from heads._nms import fixed_shape_nms


def best_first(boxes, scores, labels, valid):
    """The candidates in descending score, ties in their order, as ``fixed_shape_nms`` takes them."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return boxes[order], scores[order], labels[order], valid[order]


def reference(boxes, scores, labels, valid, iou_threshold):
    """torchvision's result as a mask over the candidates."""
    index = valid.nonzero()[:, 0]
    keep = index[batched_nms(boxes[index], scores[index], labels[index], iou_threshold)]
    return torch.zeros_like(valid).index_fill(0, keep, True)


ROWS = 24  # the most candidates a case has
THRESHOLDS = (0.0, 0.25, 0.5, 0.55, 0.7, 1.0)


@st.composite
def candidates(draw):
    """Random boxes with the cases greedy NMS gets wrong when approximated: identical boxes, tied scores, pairs at
    the threshold, zero-area boxes, invalid (padding) rows, one class or many."""
    count = draw(st.integers(0, ROWS))
    grid = draw(st.sampled_from([1.0, 4.0, 16.0]))  # coarse grids make identical boxes and exact IoU ties
    coordinate = st.integers(0, 16).map(lambda v: v * grid)
    rows = draw(st.lists(st.tuples(coordinate, coordinate, st.integers(0, 8).map(lambda v: v * grid),
                                   st.integers(0, 8).map(lambda v: v * grid)), min_size=count, max_size=count))
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in rows], dtype=torch.float32).reshape(-1, 4)
    scores = torch.tensor(draw(st.lists(st.sampled_from([0.1, 0.3, 0.5, 0.5, 0.9, 0.95]), min_size=count,
                                        max_size=count)), dtype=torch.float32)
    labels = torch.tensor(draw(st.lists(st.integers(0, draw(st.integers(0, 3))), min_size=count, max_size=count)),
                          dtype=torch.int64)
    valid = torch.tensor(draw(st.lists(st.booleans(), min_size=count, max_size=count)), dtype=torch.bool)
    threshold = draw(st.sampled_from(THRESHOLDS))
    return boxes, scores, labels, valid, threshold


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(candidates())
def test_fixed_shape_nms_is_torchvisions(case):
    boxes, scores, labels, valid, threshold = case
    boxes, scores, labels, valid = best_first(boxes, scores, labels, valid)
    assert torch.equal(fixed_shape_nms(boxes, scores, labels, valid, threshold),
                       reference(boxes, scores, labels, valid, threshold))


def test_fixed_shape_nms_on_many_random_candidates():
    """More candidates than a detector keeps, continuous coordinates and scores, several classes."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        corner = torch.rand(300, 2, generator=generator) * 300
        boxes = torch.cat([corner, corner + torch.rand(300, 2, generator=generator) * 80 + 1], 1)
        scores = torch.rand(300, generator=generator)
        labels = torch.randint(0, 5, (300,), generator=generator)
        boxes, scores, labels, valid = best_first(boxes, scores, labels, scores > 0.05)
        assert torch.equal(fixed_shape_nms(boxes, scores, labels, valid, 0.55),
                           reference(boxes, scores, labels, valid, 0.55))


class Suppress(torch.nn.Module):
    def forward(self, boxes, scores, labels):
        scores, order = scores.topk(scores.shape[0])
        return fixed_shape_nms(boxes[order], scores, labels[order], scores > 0.2, 0.5)


def test_torch_export_traces_it_with_fixed_shapes():

    corner = torch.rand(32, 2) * 50
    inputs = (torch.cat([corner, corner + 20], 1), torch.rand(32), torch.randint(0, 3, (32,)))
    exported = torch.export.export(Suppress(), inputs)
    corner = torch.rand(32, 2) * 50  # other values, same shapes
    other = (torch.cat([corner, corner + 20], 1), torch.rand(32), torch.randint(0, 3, (32,)))
    assert torch.equal(exported.module()(*other), Suppress()(*other))


class SuppressAt(torch.nn.Module):
    """The NMS with the threshold an input too, so that one lowered program serves every case."""

    def forward(self, boxes, scores, labels, valid, threshold):
        return fixed_shape_nms(boxes, scores, labels, valid, threshold)


@pytest.fixture(scope="module")
def lowered():
    """The NMS over ``ROWS`` candidates lowered to ExecuTorch (XNNPACK, as the phone files are) and its buffer."""
    pytest.importorskip("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.extension.pybindings.portable_lib import _load_for_executorch_from_buffer

    example = (torch.zeros(ROWS, 4), torch.zeros(ROWS), torch.zeros(ROWS, dtype=torch.int64),
               torch.zeros(ROWS, dtype=torch.bool), torch.tensor(0.5))
    program = torch.export.export(SuppressAt(), example)
    buffer = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer
    return _load_for_executorch_from_buffer(buffer), buffer  # the runtime reads the buffer: keep it


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(candidates())
def test_executorch_runs_it_as_torchvision_does(lowered, case):
    """XNNPACK's arithmetic (its division, subnormals flushed to zero) keeps every decision of torchvision's."""
    boxes, scores, labels, valid, threshold = case
    boxes, scores, labels, valid = best_first(boxes, scores, labels, valid)
    pad = ROWS - len(boxes)  # padding rows come last and take no part
    inputs = [torch.cat([boxes, torch.zeros(pad, 4)]), torch.cat([scores, torch.full((pad,), -1.0)]),
              torch.cat([labels, torch.zeros(pad, dtype=torch.int64)]),
              torch.cat([valid, torch.zeros(pad, dtype=torch.bool)])]
    (keep,) = lowered[0].forward([*inputs, torch.tensor(threshold)])
    assert torch.equal(keep[:len(boxes)], reference(boxes, scores, labels, valid, threshold))
