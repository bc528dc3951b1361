"""The whole efficient family as registered backbones: MobileNetV1, MNASNet, FBNet, MobileNetV4,
EfficientNet-Lite and Once-for-All; each loads its library's weights from a file a test saves.

(The pyramid contract itself — levels at 224, 320 and an odd size, output strides, gradients, the three
heads and export — is parametrized over every registered name in the other test files.)"""


import pytest
import timm
import torch
import torchvision
from sweep import sweep
from test_weights import _assert_loaded, _randomized
from timm.models.efficientnet import _gen_mobilenet_v1

from backbones import build_backbone, list_backbones
from backbones.once_for_all import SUPERNETS
from tasks.benchmark.quantization import backbone_config

TIMM = {
    "mobilenet_v1": "mobilenetv1_100", "mobilenet_v1_125": "mobilenetv1_125",
    "fbnetc_100": "fbnetc_100", "fbnetv3_b": "fbnetv3_b", "fbnetv3_d": "fbnetv3_d", "fbnetv3_g": "fbnetv3_g",
    **{f"mobilenet_v4_conv_{s}": f"mobilenetv4_conv_{s}" for s in ("small", "medium", "large")},
    **{f"efficientnet_lite{i}": f"efficientnet_lite{i}" for i in range(5)},
}
MOBILENET_V1_WIDTHS = {"mobilenet_v1_025": 0.25, "mobilenet_v1_050": 0.5, "mobilenet_v1_075": 0.75}
TORCHVISION = {"mnasnet_050": "mnasnet0_5", "mnasnet_075": "mnasnet0_75", "mnasnet": "mnasnet1_0",
               "mnasnet_130": "mnasnet1_3"}
FAMILY = [*TIMM, *MOBILENET_V1_WIDTHS, *TORCHVISION, "ofa_mbv3", "ofa_mbv3_w12"]


def test_the_family_is_registered():
    assert set(FAMILY) <= set(list_backbones())


@pytest.mark.parametrize("name", sweep([*TIMM, *MOBILENET_V1_WIDTHS, *TORCHVISION]))
def test_library_classifier_file_loads(tmp_path, name):
    """The library's own classifier, its weights saved as it publishes them, loads with its head dropped."""
    if name in TORCHVISION:
        classifier, prefix = torchvision.models.get_model(TORCHVISION[name]), ""
    elif name in MOBILENET_V1_WIDTHS:
        classifier, prefix = _gen_mobilenet_v1("mobilenetv1_100", MOBILENET_V1_WIDTHS[name]), "model."
    else:
        classifier, prefix = timm.create_model(TIMM[name]), "model."
    reference = _randomized(classifier).state_dict()
    path = tmp_path / f"{name}.pth"
    torch.save(reference, path)
    backbone = build_backbone(name, pretrained=str(path))
    _assert_loaded(backbone, reference, prefix=prefix)
    if name in TORCHVISION:  # C5 is the body's output: torchvision's own forward (at its own, finite, init)
        classifier = torchvision.models.get_model(TORCHVISION[name]).eval()
        torch.save(classifier.state_dict(), path)
        backbone = build_backbone(name, pretrained=str(path)).eval()
        x = torch.randn(1, 3, 96, 128)
        with torch.no_grad():
            torch.testing.assert_close(backbone(x)["C5"], classifier.layers(x), rtol=0, atol=0)


@pytest.mark.parametrize("name, width", [("mobilenet_v1_025", 0.25), ("mobilenet_v1_050", 0.5),
                                         ("mobilenet_v1_075", 0.75), ("mobilenet_v1", 1.0), ("mobilenet_v1_125", 1.25)])
def test_mobilenet_v1_is_the_papers_network(name, width):
    """13 depthwise-separable layers after the stem; C4 is the 11th's output (512 alpha channels, stride 16) and
    C5 the 13th's (1024 alpha, stride 32), the maps MobileNet-SSD puts its first heads on."""
    model = build_backbone(name, levels=(16, 32)).eval()
    separable = [m for m in model.modules() if type(m).__name__ == "DepthwiseSeparableConv"]
    assert len(separable) == 13
    assert model.feature_info.channels() == [round(512 * width), round(1024 * width)]
    outputs = {}
    for i in (10, 12):
        separable[i].register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out))
    with torch.no_grad():
        features = model(torch.randn(1, 3, 224, 224))
    torch.testing.assert_close(features["C4"], outputs[10], rtol=0, atol=0)
    torch.testing.assert_close(features["C5"], outputs[12], rtol=0, atol=0)
    assert features["C4"].shape[-1] == 14 and features["C5"].shape[-1] == 7


def test_mobilenet_v1_errors():
    with pytest.raises(ValueError, match="no expansion layer: feature_location must be 'block'"):
        build_backbone("mobilenet_v1", feature_location="expansion")
    with pytest.raises(ValueError, match="widths 1.0 and 1.25, not 0.5"):
        build_backbone("mobilenet_v1_050", pretrained=True)


def test_mnasnet_expansion_taps():
    """C4 at the expansion (1x1 conv, norm, ReLU) of the block that next halves the resolution."""
    model = build_backbone("mnasnet", levels=(16, 32), feature_location="expansion").eval()
    assert [lv.location for lv in model.feature_info] == ["expansion", "block"]
    assert model.feature_info[0].module == "layers.12.0.layers.2" and model.feature_info.channels() == [576, 1280]
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        expected = model.layers[12][0].layers[:3](model.layers[:12](x))
        torch.testing.assert_close(model(x)["C4"], expected, rtol=0, atol=0)


def test_timm_families_say_what_they_cannot_do():
    with pytest.raises(ValueError, match="mobilenetv4_conv_small' cannot be built with .*expansion"):
        build_backbone("mobilenet_v4_conv_small", feature_location="expansion")
    with pytest.raises(ValueError, match="no pretrained weights for 'efficientnet_lite1'.*timm:tf_efficientnet_lite1"):
        build_backbone("efficientnet_lite1", pretrained=True)


def _supernet(width_mult=1.0):
    from ofa.imagenet_classification.elastic_nn.networks import OFAMobileNetV3

    supernet = OFAMobileNetV3(dropout_rate=0, width_mult=width_mult, ks_list=[3, 5, 7], expand_ratio_list=[3, 4, 6],
                              depth_list=[2, 3, 4])
    with torch.no_grad():  # every value distinct, so a wrong load shows, and outputs finite
        for tensor in supernet.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.rand_like(tensor))
    return supernet


CHOICE = {"ks": [3, 5, 7, 3] * 5, "e": [6, 4, 3, 4] * 5, "d": [2, 3, 4, 3, 2]}


def _ofa_subnet(supernet):
    supernet.set_active_subnet(**CHOICE)
    return supernet.get_active_subnet(preserve_weight=True).eval()


def test_once_for_all_subnet_from_the_supernets_weights(tmp_path):
    supernet = _supernet()
    path = tmp_path / SUPERNETS[1.0]
    torch.save({"state_dict": supernet.state_dict()}, path)  # as Once-for-All publishes it
    backbone = build_backbone("ofa_mbv3", pretrained=str(path), **CHOICE).eval()
    subnet = _ofa_subnet(supernet)
    _assert_loaded(backbone, subnet.state_dict())
    assert len(backbone.blocks) == 1 + sum(CHOICE["d"])
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        features = backbone(x)
        y = subnet.first_conv(x)
        for block in subnet.blocks:
            y = block(y)
        torch.testing.assert_close(features["C5"], subnet.final_expand_layer(y), rtol=0, atol=0)
    assert backbone.feature_info.channels() == [16, 24, 40, 112, 960]

    own = tmp_path / "subnet.pth"  # a subnet's own state dict (ofa's, with its classifier) loads too
    torch.save(subnet.state_dict(), own)
    _assert_loaded(build_backbone("ofa_mbv3", pretrained=str(own), levels=(8, 16), **CHOICE), subnet.state_dict())
    with pytest.raises(ValueError, match="fit neither Once-for-All's supernet ofa_mbv3_d234_e346_k357_w1.0 nor"):
        build_backbone("ofa_mbv3", pretrained=str(own))  # another subnet


def test_once_for_all_pretrained_true_reads_the_torch_hub_cache(hub_dir):
    with pytest.raises(FileNotFoundError, match=f"put it at {hub_dir / 'checkpoints' / SUPERNETS[1.2]}"):
        build_backbone("ofa_mbv3_w12", pretrained=True)
    supernet = _supernet(1.2)
    torch.save({"state_dict": supernet.state_dict()}, hub_dir / "checkpoints" / SUPERNETS[1.2])
    backbone = build_backbone("ofa_mbv3_w12", pretrained=True, **CHOICE)
    _assert_loaded(backbone, _ofa_subnet(supernet).state_dict())


def test_once_for_all_expansion_taps_and_errors():
    model = build_backbone("ofa_mbv3", levels=(16, 32), feature_location="expansion", **CHOICE).eval()
    first_of_last_stage = 1 + sum(CHOICE["d"][:4])
    assert model.feature_info[0].module == f"blocks.{first_of_last_stage}.conv.inverted_bottleneck"
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        y = model.first_conv(x)
        for block in model.blocks[:first_of_last_stage]:
            y = block(y)
        expected = model.blocks[first_of_last_stage].conv.inverted_bottleneck(y)
        torch.testing.assert_close(model(x)["C4"], expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"ks must be one of \(3, 5, 7\) or a list of 20"):
        build_backbone("ofa_mbv3", ks=4)
    with pytest.raises(ValueError, match=r"d must be one of \(2, 3, 4\) or a list of 5"):
        build_backbone("ofa_mbv3", d=[2, 3])


def test_quantization_recipe_swaps_only_the_backbone(tmp_path):
    base = {"trainer": {"max_epochs": 7, "default_root_dir": "runs/demo/detect"},
            "model": {"backbone": {"name": "mobilenet_v3_large", "levels": [8, 16, 32],
                                   "feature_location": "expansion", "options": {"bn_momentum": 0.1}},
                      "head": {"class_path": "heads.ssdlite.SSDLite"}},
            "data": {"image_size": 192}}
    v1 = backbone_config(base, "mobilenet_v1", tmp_path, epochs=3)
    assert v1["model"]["backbone"] == {"name": "mobilenet_v1", "levels": [8, 16, 32], "feature_location": "block"}
    assert v1["trainer"] == {"max_epochs": 3, "default_root_dir": str(tmp_path)}
    assert v1["model"]["head"] == base["model"]["head"] and v1["data"] == base["data"]
    assert base["model"]["backbone"]["name"] == "mobilenet_v3_large"  # the base is left as it was
    lite = backbone_config(base, "efficientnet_lite0", tmp_path, epochs=None)
    assert lite["model"]["backbone"]["feature_location"] == "expansion" and lite["trainer"]["max_epochs"] == 7
