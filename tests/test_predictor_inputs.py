"""The predictors take exactly what they document and refuse the rest in one line: nothing clamped, wrapped or
turned into NaN keypoints."""

import numpy as np
import pytest
import torch

from tasks.deploy.predictor import PoseEstimator, as_image


def test_uint8_and_unit_floats_are_taken_as_they_are():
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8)
    assert torch.equal(as_image(image), image)
    assert torch.equal(as_image(image.float() / 255), image)
    assert torch.equal(as_image(image.long()), image)
    assert torch.equal(as_image(image.permute(1, 2, 0).numpy()), image)


@pytest.mark.parametrize("image, error, says", [
    (torch.full((3, 4, 4), 200.0), ValueError, "values in [0, 1], got 200 to 200: for 0-255 values pass"),
    (torch.full((3, 4, 4), -0.5), ValueError, "values in [0, 1], got -0.5 to -0.5"),
    (torch.full((3, 4, 4), float("nan")), ValueError, "values in [0, 1], got nan"),
    (torch.full((3, 4, 4), 300, dtype=torch.int64), ValueError, "values 0-255, got 300 to 300"),
    (torch.full((3, 4, 4), -1, dtype=torch.int32), ValueError, "values 0-255, got -1 to -1"),
    (torch.zeros(3, 4, 4, dtype=torch.bool), TypeError, "uint8 (0-255) or float (0-1), got torch.bool"),
    (torch.zeros(3, 0, 0), ValueError, "an image must have pixels, got 0x0"),
    (np.zeros((0, 5, 3), np.uint8), ValueError, "an image must have pixels, got 0x5"),
    (np.zeros((4, 4, 3), np.float32), TypeError, "a NumPy image must be uint8"),
])
def test_anything_else_is_one_clear_error(image, error, says):
    with pytest.raises(error) as raised:
        as_image(image)
    assert says in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize("boxes, says", [
    ([[10, 10, 10, 30]], "person box [10.0, 10.0, 10.0, 30.0] of image 0 is not a box"),
    ([[5, 5, float("nan"), 9]], "is not a box"),
    ([[40, 40, 60, 60]], "has no area inside the image (32x32)"),
    ([[1, 2, 3]], "must be (B, 4)"),
    ([["a", "b", "c", "d"]], "must be numbers"),
])
def test_a_person_box_that_is_no_box_is_refused_not_estimated_as_nan(boxes, says):
    def network(images):
        raise AssertionError("a bad box must be refused before the network runs")

    estimator = PoseEstimator(network, {"task": "pose", "input_size": [16, 16], "keypoint_names": ["nose"]})
    with pytest.raises(ValueError, match=None) as raised:
        estimator(torch.zeros(3, 32, 32, dtype=torch.uint8), boxes)
    assert says in str(raised.value)
