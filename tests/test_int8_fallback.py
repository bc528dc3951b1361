"""``export --int8 true --int8_max_drop D``: the search for the fewest layers kept in float, and the sensitivity
ranking it follows."""

import math

import numpy as np
import onnx
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tasks.deploy.fallback import fewest_in_float, layer_sensitivity, quantize_within
from tasks.deploy.quantize import quantize_int8


@settings(max_examples=200, deadline=None)
@given(drops=st.lists(st.floats(0, 1), min_size=1, max_size=80), max_drop=st.floats(0, 1))
def test_the_search_finds_the_fewest_layers_when_the_drop_falls_with_each_one(drops, max_drop):
    """For a drop that falls (or stays) as layers go float, the search returns the smallest count within the bound,
    asking about log2(count) + 1 counts."""
    drops = sorted(drops, reverse=True) + [0.0]  # drops[k]: k layers in float; all of them float: no drop
    asked = []

    def drop(count):
        asked.append(count)
        return drops[count]

    found = fewest_in_float(len(drops) - 1, drop, max_drop)
    assert found == min(k for k, value in enumerate(drops) if value <= max_drop)
    assert len(drops) - 1 not in asked and len(asked) <= math.ceil(math.log2(len(drops))) + 1


def test_a_loose_bound_asks_once_and_keeps_nothing():
    asked = []
    assert fewest_in_float(30, lambda k: asked.append(k) or 0.004, 0.005) == 0 and asked == [0]


class _ThreeConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.middle, self.last = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1)

    def forward(self, images):
        x = images.float() / 255
        return self.last(torch.relu(self.middle(torch.relu(self.first(x)))))


def test_the_layer_quantization_distorts_most_ranks_first(tmp_path):
    """A convolution whose every output channel holds one weight 30 times its others quantizes those others in steps
    of a quarter of their size (one int8 scale per channel): ONNX Runtime's debugger measures the most noise there."""
    torch.manual_seed(0)
    model = _ThreeConvs().eval()
    with torch.no_grad():
        model.middle.weight[:, 0, 0, 0] = 30 * model.middle.weight.abs().max()
    fp32, int8 = tmp_path / "model.onnx", tmp_path / "model_int8.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16, dtype=torch.uint8),), str(fp32), input_names=["images"],
                      dynamo=False)
    images = [np.random.default_rng(i).integers(0, 256, (3, 16, 16), dtype=np.uint8) for i in range(4)]
    quantize_int8(fp32, int8, iter(images), keep_float=())
    sensitivity = layer_sensitivity(fp32, int8, images)
    convs = [node.name for node in onnx.load(str(fp32)).graph.node if node.op_type == "Conv"]
    assert set(sensitivity) == set(convs) and all(value > 0 for value in sensitivity.values())
    assert max(sensitivity, key=sensitivity.get) == convs[1], sensitivity
    assert sensitivity[convs[1]] > 4 * max(sensitivity[convs[0]], sensitivity[convs[2]])


def test_a_tight_bound_keeps_the_sensitive_layer_in_float_and_the_file_holds_it(tmp_path):
    """With the score the outputs' closeness to the float model's, INT8 of every layer drops it; a bound of half that
    drop keeps the distorted convolution (at least) in float, and the written file scores what the search found."""
    import onnxruntime

    torch.manual_seed(0)
    model = _ThreeConvs().eval()
    with torch.no_grad():
        model.middle.weight[:, 0, 0, 0] = 30 * model.middle.weight.abs().max()
    fp32 = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16, dtype=torch.uint8),), str(fp32), input_names=["images"],
                      dynamo=False)
    images = [np.random.default_rng(i).integers(0, 256, (3, 16, 16), dtype=np.uint8) for i in range(6)]

    def outputs(path):
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {"images": image[None]})[0] for image in images])

    expected = outputs(fp32)

    def score(path):
        return -float(np.abs(outputs(path) - expected).mean())

    loose = quantize_within(fp32, tmp_path / "loose.onnx", images, score, max_drop=1.0, log=lambda line: None)
    assert loose["kept_in_float"] == [] and loose["fallback"]["int8"] < 0
    bound = -loose["fallback"]["int8"] / 2
    record = quantize_within(fp32, tmp_path / "tight.onnx", images, score, max_drop=bound, log=lambda line: None)
    convs = [node.name for node in onnx.load(str(fp32)).graph.node if node.op_type == "Conv"]
    assert record["kept_in_float"][0] == convs[1] and record["fallback"]["quantized_layers"] == 3
    assert -record["fallback"]["int8"] <= bound and score(tmp_path / "tight.onnx") == record["fallback"]["int8"]
