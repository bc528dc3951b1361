"""Necks: torchvision's FPN and SSDLite's extra layers, stating their output levels."""

import pytest
import torch
from torchvision.models.detection import ssdlite320_mobilenet_v3_large

from backbones import FPN, BackboneWithNeck, SSDLiteExtra, build_backbone, check_pyramid_output


@pytest.mark.parametrize("output_stride", [32, 16])
def test_fpn_over_a_backbone(output_stride):
    body = build_backbone("mobilenet_v2", levels=(4, 8, 16, 32), output_stride=output_stride)
    model = BackboneWithNeck(body, FPN(body.feature_info, out_channels=64)).eval()
    assert model.feature_info.names() == ["C2", "C3", "C4", "C5", "pool"]
    assert set(model.feature_info.channels()) == {64}
    with torch.no_grad():
        check_pyramid_output(model, model(torch.randn(1, 3, 225, 161)), (225, 161))


def test_ssdlite_extra_reaches_one_pixel_at_320():
    body = build_backbone("mobilenet_v3_large", levels=(16, 32), feature_location="expansion", reduced_tail=True)
    model = BackboneWithNeck(body, SSDLiteExtra(body.feature_info)).eval()
    assert model.feature_info.channels() == [672, 480, 512, 256, 256, 128]
    assert model.feature_info.strides() == [16, 32, 64, 128, 256, 512]
    with torch.no_grad():
        out = model(torch.randn(1, 3, 320, 320))
    check_pyramid_output(model, out, (320, 320))
    assert [tuple(f.shape[-2:]) for f in out.values()] == [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def test_ssdlite_extra_equals_torchvision():
    """Same blocks, same keys and shapes as torchvision's SSDLite extra layers, and the same outputs."""
    reference = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None).backbone.eval()
    body = build_backbone("mobilenet_v3_large", levels=(16, 32), feature_location="expansion", reduced_tail=True)
    extra = SSDLiteExtra(body.feature_info).eval()
    theirs = {k: v.shape for k, v in reference.extra.state_dict().items()}
    ours = {k.removeprefix("extra."): v.shape for k, v in extra.state_dict().items()}
    assert ours == theirs
    extra.extra.load_state_dict(reference.extra.state_dict())
    x = torch.randn(1, 480, 10, 10)
    with torch.no_grad():
        expected = x
        for block in reference.extra:
            expected = block(expected)
        got = extra({"C4": torch.randn(1, 672, 20, 20), "C5": x})
    torch.testing.assert_close(got["C9"], expected)


def test_ssdlite_extra_width():
    body = build_backbone("mobilenet_v2", levels=(16, 32))
    extra = SSDLiteExtra(body.feature_info, width_mult=0.25)
    assert extra.feature_info.channels()[2:] == [128, 64, 64, 32]
