"""The pyramid contract, for every registered backbone and a few timm ones."""

from collections import OrderedDict

import pytest
import torch
import torchvision
from sweep import backbones, sweep
from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from backbones import (
    FeatureInfo,
    Level,
    TimmBackbone,
    build_backbone,
    check_pyramid_output,
    list_backbones,
)

SIZES = [(224, 224), (320, 320), (257, 321)]
TIMM_MODELS = ["timm:mobilenetv4_conv_small", "timm:efficientnet_lite0", "timm:fbnetc_100"]
# the other timm names are registered representatives' own models: slow
ALL = [*backbones(TIMM_MODELS[0]), *sweep(TIMM_MODELS[1:], keep=())]
# EfficientNet's stochastic depth and dropout make training forwards random; harmless here.


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name, **options):
        key = (name, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = build_backbone(name, **options)
        return cache[key]

    return get


def test_issue_backbones_are_registered():
    expected = {"mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small"}
    expected |= {f"mobilenet_v2_{w}" for w in ("035", "050", "075", "140")}
    expected |= {f"efficientnet_b{i}" for i in range(8)} | {f"efficientnet_v2_{s}" for s in "sml"}
    assert expected <= set(list_backbones())


@pytest.mark.parametrize("name", ALL)
def test_levels_match_feature_info(built, name):
    model = built(name).eval()
    info = model.feature_info
    assert isinstance(info, FeatureInfo)
    assert info.strides() == sorted(info.strides())
    assert model.out_channels == info.channels() and model.strides == info.strides()
    with torch.no_grad():
        for size in SIZES:
            features = model(torch.randn(2, 3, *size))
            check_pyramid_output(model, features, size)  # names, channels, ceil(size / stride)
            assert [f.shape[0] for f in features.values()] == [2] * len(info)


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_parameter(built, name):
    model = built(name).train()
    features = model(torch.randn(2, 3, 97, 129))
    sum(f.float().mean() for f in features.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("output_stride", [16, 8])
@pytest.mark.parametrize("name", ALL)
def test_output_stride(name, output_stride):
    model = build_backbone(name, output_stride=output_stride).eval()
    strides = model.feature_info.strides()
    assert max(strides) == output_stride
    assert strides == [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
    size = (97, 129)
    with torch.no_grad():
        check_pyramid_output(model, model(torch.randn(1, 3, *size)), size)


def test_dilated_backbone_keeps_weights():
    plain = build_backbone("mobilenet_v2")
    dilated = build_backbone("mobilenet_v2", output_stride=8)
    plain_state, dilated_state = plain.state_dict(), dilated.state_dict()
    assert plain_state.keys() == dilated_state.keys()
    assert all(plain_state[k].shape == dilated_state[k].shape for k in plain_state)


def test_level_selection_drops_unused_layers():
    model = build_backbone("mobilenet_v3_large", levels=(4, 8))
    assert model.feature_info.names() == ["C2", "C3"]
    assert len(model.features) == 7  # stem + 6 blocks reach stride 8; the rest is gone
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert list(out) == ["C2", "C3"] and isinstance(out, OrderedDict)


def test_expansion_tap_is_ssdlite_c4():
    """MobileNetV3-Large's C4 at the expansion layer: torchvision SSDLite's first feature map (672 ch)."""
    model = build_backbone("mobilenet_v3_large", levels=(16, 32), feature_location="expansion").eval()
    assert model.feature_info.channels() == [672, 960]
    assert [lv.location for lv in model.feature_info] == ["expansion", "block"]
    assert model.feature_info[0].module == "features.13.block.0"
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        out = model(x)
        expected = model.features[13].block[0](model.features[:13](x))
        deepest = model.features(x)
    torch.testing.assert_close(out["C4"], expected, rtol=0, atol=0)
    torch.testing.assert_close(out["C5"], deepest, rtol=0, atol=0)
    assert out["C4"].shape[-2:] == (20, 20)


def test_expansion_falls_back_where_no_expansion_layer():
    model = build_backbone("efficientnet_v2_s", feature_location="expansion")
    # Fused-MBConv stages (C2, C3's next blocks) have no separate expansion; C5 has no next block
    assert [lv.location for lv in model.feature_info] == ["block", "block", "expansion", "expansion", "block"]


@pytest.mark.parametrize("name", ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", *TIMM_MODELS[:1]])
@pytest.mark.parametrize("frozen_stages", [1, 3, 5])
def test_frozen_stages_get_no_gradient(name, frozen_stages):
    model = build_backbone(name, frozen_stages=frozen_stages).train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen, "nothing was frozen"
    features = model(torch.randn(2, 3, 64, 64))
    # frozen levels are computed entirely by frozen layers
    shallow = [lv.name for lv in model.feature_info if lv.stride <= 2**frozen_stages]
    for level in shallow:
        assert not features[level].requires_grad
    if frozen_stages == 5:
        assert all(not p.requires_grad for p in model.parameters())
        return
    sum(f.mean() for f in features.values()).backward()
    for n, p in model.named_parameters():
        assert (p.grad is None) == (n in frozen), n


def test_frozen_stages_freeze_batch_norm_statistics():
    model = build_backbone("mobilenet_v2", frozen_stages=2).train()
    stem_norm = model.features[0][1]
    assert isinstance(stem_norm, FrozenBatchNorm2d)
    later = model.features[10].conv[1][1]
    assert isinstance(later, nn.BatchNorm2d)
    before_stem, before_later = stem_norm.running_mean.clone(), later.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    torch.testing.assert_close(stem_norm.running_mean, before_stem)
    assert not torch.equal(later.running_mean, before_later)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "timm:mobilenetv4_conv_small"])
def test_freeze_bn_keeps_statistics_but_trains_affine(name):
    model = build_backbone(name, freeze_bn=True).train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    before = [m.running_mean.clone() for m in norms]
    features = model(torch.randn(2, 3, 64, 64))
    sum(f.mean() for f in features.values()).backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms))
    assert all(m.weight.grad is not None for m in norms)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"levels": (32, 16)}, "increasing strides"),
        ({"levels": (3,)}, "increasing strides"),
        ({"output_stride": 4}, "output_stride must be 8, 16 or 32"),
        ({"feature_location": "middle"}, "feature_location"),
        ({"frozen_stages": 6}, "frozen_stages"),
        ({"reduced_tail": True}, "does not take"),  # MobileNetV2 has no reduced tail
        ({"colour": "red"}, "has no option 'colour'"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(ValueError, match=message):
        build_backbone("mobilenet_v2", **options)


def test_mobilenet_options_reach_torchvision():
    slim = build_backbone("mobilenet_v2_035")
    assert slim.feature_info.channels()[:4] == [8, 8, 16, 32]
    tail = build_backbone("mobilenet_v3_large", reduced_tail=True)
    assert tail.feature_info.channels()[-1] == 480
    wide = build_backbone("mobilenet_v3_small", width_mult=1.5)
    reference = torchvision.models.mobilenet_v3_small(width_mult=1.5)
    assert wide.feature_info.channels()[-1] == reference.features[-1].out_channels


@pytest.mark.parametrize(
    ("name", "arch", "channels"),
    [("mobilenet_v2", "mobilenet_v2", 320), ("mobilenet_v3_large", "mobilenet_v3_large", 160),
     ("efficientnet_b0", "efficientnet_b0", 320), ("mnasnet", "mnasnet1_0", 320)],
)
def test_last_conv_false_ends_c5_at_the_last_block(name, arch, channels):
    reference = torchvision.models.get_model(arch, weights=None).eval()
    body = getattr(reference, "features", None) or reference.layers
    model = build_backbone(name, levels=(16, 32), last_conv=False).eval()
    assert model.feature_info.channels()[-1] == channels
    prefix = "features" if hasattr(reference, "features") else "layers"
    kept = {f"{prefix}.{i}." for i in range(len(model.body))}
    model.load_state_dict({k: v for k, v in reference.state_dict().items()
                           if any(k.startswith(p) for p in kept)})
    x = torch.randn(1, 3, 96, 96)
    # the 1x1 conv it leaves out is the classifier's last conv with its norm and activation
    last_block = nn.Sequential(*body[: len(model.body)])
    assert len(body) - len(model.body) == (3 if name == "mnasnet" else 1)
    torch.testing.assert_close(model(x)["C5"], last_block(x))


def test_last_conv_false_loads_classifier_weights(tmp_path):
    reference = torchvision.models.mobilenet_v2()
    torch.save(reference.state_dict(), tmp_path / "mbv2.pth")
    model = build_backbone("mobilenet_v2", pretrained=str(tmp_path / "mbv2.pth"), last_conv=False)
    assert torch.equal(model.body[17].conv[2].weight, reference.features[17].conv[2].weight)


def test_timm_backbone_reads_timm_feature_info():
    model = build_backbone("timm:efficientnet_lite0", levels=(8, 32), feature_location="expansion")
    assert isinstance(model, TimmBackbone)
    assert model.feature_info.names() == ["C3", "C5"]
    assert model.feature_info.channels() == model.model.feature_info.channels()
    assert model.feature_info.strides() == [8, 32]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("timm:no_such_model", {}, "timm has no model"),
        ("timm:vit_tiny_patch16_224", {}, "not a multi-scale pyramid"),
        ("timm:ghostnet_100", {"output_stride": 8}, "cannot be built with"),
        ("timm:mobilenetv4_conv_small", {"feature_location": "expansion"}, "cannot be built with"),
        ("timm:mobilenetv4_conv_small", {"levels": (2, 64)}, "increasing strides"),
        ("timm:convnext_atto", {"levels": (2,)}, "no level at stride"),
    ],
)
def test_timm_errors(name, options, message):
    with pytest.raises(ValueError, match=message):
        build_backbone(name, **options)


def test_feature_info_validation():
    with pytest.raises(ValueError, match="never decrease"):
        FeatureInfo([Level("a", 8, 16), Level("b", 8, 8)])
    with pytest.raises(ValueError, match="unique"):
        FeatureInfo([Level("a", 8, 8), Level("a", 8, 16)])
    with pytest.raises(ValueError, match="channels"):
        FeatureInfo([Level("a", 0, 8)])
    with pytest.raises(ValueError, match="at least one"):
        FeatureInfo([])
    info = FeatureInfo([Level("a", 8, 8), Level("b", 16, 16), Level("c", 16, 16)])
    assert info["b"].channels == 16 and info[1:].names() == ["b", "c"]
    assert info.map_sizes(33, 17) == [(5, 3), (3, 2), (3, 2)]


def test_expansion_taps_survive_torch_export():
    """Non-strict torch.export swaps module attributes for copies while tracing; the backbone must keep
    returning its expansion levels afterwards."""
    backbone = build_backbone("mobilenet_v3_large", levels=(16, 32), feature_location="expansion").eval()

    class Levels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return tuple(self.backbone(x).values())

    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        before = backbone(x)
        torch.export.export(Levels(), (x,), strict=False)
        after = backbone(x)
    assert list(after) == ["C4", "C5"] and all(torch.equal(before[k], after[k]) for k in before)


def test_table_written_as_a_markdown_page(tmp_path, capsys):
    """``python -m backbones --markdown PAGE`` prints the table as before and writes it with its command and machine."""
    from importlib.metadata import version

    from backbones.__main__ import main
    from tasks.benchmark.machine import cpu_name

    page = tmp_path / "docs" / "backbones.md"
    assert main(["--size", "64", "mobilenet_v3_small", "mnasnet_050", "--markdown", str(page)]) == 0
    printed = capsys.readouterr().out
    text = page.read_text()
    assert text.startswith("# ")
    assert f"`python -m backbones --size 64 mobilenet_v3_small mnasnet_050 --markdown {page}`" in text
    rows = [line for line in text.splitlines() if line.startswith("| m")]
    assert [row.split(" | ")[0] for row in rows] == ["| mobilenet_v3_small", "| mnasnet_050"]
    assert rows[0].startswith("| mobilenet_v3_small | 0.93 |") and rows[0].endswith("C5:576/32 |")
    assert all(row in printed for row in rows)
    machine = next(line for line in text.splitlines() if line.startswith("Machine: "))
    assert cpu_name() in machine and f"torch {version('torch')}" in machine
