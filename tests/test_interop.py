"""Kestrel backbones inside torchvision's detectors and segmentation_models_pytorch's models."""

import pytest
import segmentation_models_pytorch as smp
import torch
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator

from backbones import build_backbone
from backbones.interop import register_smp_encoders, torchvision_backbone


def _targets():
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 90.0, 110.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[30.0, 30.0, 60.0, 70.0], [5.0, 5.0, 40.0, 50.0]]), "labels": torch.tensor([2, 1])},
    ]


def _retinanet(backbone):
    # RetinaNet's default anchors: 3 scales x 3 ratios on each of the five maps
    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (32, 64, 128, 256, 512))
    return RetinaNet(backbone, num_classes=3, anchor_generator=AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5))


@pytest.mark.parametrize("detector", [
    lambda b: FasterRCNN(b, num_classes=3, min_size=128, max_size=160),
    lambda b: _retinanet(b),
    lambda b: FCOS(b, num_classes=3, min_size=128, max_size=160),
], ids=["FasterRCNN", "RetinaNet", "FCOS"])
def test_torchvision_detectors_train_and_detect_with_a_kestrel_backbone(detector):
    backbone = torchvision_backbone("mobilenet_v3_small", out_channels=64)
    assert backbone.out_channels == 64 and backbone.strides == [4, 8, 16, 32, 64]
    model = detector(backbone)
    images = [torch.rand(3, 128, 150), torch.rand(3, 140, 128)]
    model.train()
    losses = model(images, _targets())
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert backbone.body.feature_info  # the Kestrel pyramid is inside, and learns:
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.body.parameters())
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and set(detections[0]) >= {"boxes", "scores", "labels"}


def test_torchvision_backbone_names_levels_as_torchvision():
    backbone = torchvision_backbone("mobilenet_v2", out_channels=32, levels=(8, 16, 32), extra_pool=False)
    out = backbone(torch.rand(1, 3, 96, 96))
    assert list(out) == ["0", "1", "2"] and [v.shape[1] for v in out.values()] == [32] * 3
    assert [v.shape[-1] for v in out.values()] == [12, 6, 3]


@pytest.fixture(scope="module")
def smp_names():
    return register_smp_encoders(["mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0"])


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("encoder", ["kestrel-mobilenet_v2", "kestrel-efficientnet_b0"])
def test_smp_deeplabv3plus(smp_names, encoder, output_stride):
    model = smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, encoder_output_stride=output_stride,
                              classes=4).eval()
    assert model.encoder.body.feature_info[-1].stride == output_stride
    with torch.no_grad():
        assert model(torch.rand(1, 3, 128, 96)).shape == (1, 4, 128, 96)


@pytest.mark.parametrize("model_class", [smp.Unet, smp.FPN])
@pytest.mark.parametrize("encoder", ["kestrel-mobilenet_v3_large", "kestrel-mobilenet_v2"])
def test_smp_unet_and_fpn(smp_names, model_class, encoder):
    model = model_class(encoder_name=encoder, encoder_weights=None, classes=2)
    out = model(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 2, 64, 96)
    out.mean().backward()


def test_smp_shallower_encoder(smp_names):
    model = smp.Unet(encoder_name="kestrel-mobilenet_v2", encoder_weights=None, encoder_depth=4,
                     decoder_channels=(64, 32, 16, 8), classes=1).eval()
    assert model.encoder.out_channels == [3, 16, 24, 32, 96]
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_smp_pretrained_names_are_refused_and_kestrel_weights_load(smp_names, tmp_path):
    with pytest.raises(KeyError, match="kestrel-mobilenet_v2"):
        smp.Unet(encoder_name="kestrel-mobilenet_v2", encoder_weights="imagenet")
    weights = tmp_path / "mbv2.pth"
    reference = build_backbone("mobilenet_v2")
    torch.save(reference.state_dict(), weights)
    register_smp_encoders(["mobilenet_v2"], pretrained=str(weights))
    model = smp.Unet(encoder_name="kestrel-mobilenet_v2", encoder_weights=None)
    got = model.encoder.body.state_dict()
    assert all(torch.equal(got[k], v) for k, v in reference.state_dict().items())
    register_smp_encoders(["mobilenet_v2"])  # as the other tests expect it
