"""The registry: decorator, lookup errors and third-party backbones through entry points."""

import sys
import textwrap

import pytest
import torch

import backbones
from backbones import _registry, build_backbone, list_backbones, register_backbone, reload_plugins
from backbones.__main__ import main as table_main


@pytest.fixture
def clean_registry():
    """Undo registrations and plugin discovery made by a test."""
    saved = dict(_registry._BUILTINS)
    yield
    _registry._BUILTINS.clear()
    _registry._BUILTINS.update(saved)
    reload_plugins()


def test_register_and_build(clean_registry):
    @register_backbone("tiny_test_net")
    def tiny(width: int = 8):
        return backbones.build_backbone("mobilenet_v3_small", levels=(8,), width_mult=width / 16)

    assert "tiny_test_net" in list_backbones()
    model = build_backbone("tiny_test_net", width=16)
    assert model.feature_info.names() == ["C3"]
    with pytest.raises(ValueError, match="has no option 'depth'; its options are: width"):
        build_backbone("tiny_test_net", depth=3)


def test_duplicate_and_invalid_names_raise(clean_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("mobilenet_v2")(lambda: None)
    for bad in ("", "timm:resnet18", " padded "):
        with pytest.raises(ValueError, match="invalid backbone name"):
            register_backbone(bad)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        build_backbone("mobilenet_v4")
    message = str(err.value)
    assert "unknown backbone 'mobilenet_v4'" in message
    assert "Did you mean" in message
    for name in list_backbones():
        assert name in message
    assert "timm:<model_name>" in message


def test_a_factory_breaking_the_contract_is_reported(clean_registry):
    register_backbone("plain_module")(lambda: torch.nn.Conv2d(3, 8, 3))
    with pytest.raises(TypeError, match="backbone 'plain_module' does not satisfy.*no `feature_info`"):
        build_backbone("plain_module")


PLUGIN = '''
from collections import OrderedDict

from torch import nn

from backbones import FeatureInfo, Level, Pyramid


class TwoLevelNet(Pyramid):
    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=4, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.feature_info = FeatureInfo([Level("C2", width, 4, "stem"), Level("C3", 2 * width, 8, "down")])

    def forward(self, x):
        c2 = self.stem(x)
        return OrderedDict(C2=c2, C3=self.down(c2))


def two_level_net(width: int = 8):
    return TwoLevelNet(width)
'''


def _install_distribution(root, name, entry_points):
    """Write what `pip install` leaves behind: the module and its *.dist-info with entry_points.txt."""
    dist_info = root / f"{name}-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def site_dir(tmp_path, monkeypatch, clean_registry):
    monkeypatch.syspath_prepend(str(tmp_path))
    reload_plugins()
    yield tmp_path
    for module in [m for m in sys.modules if m.startswith("kestrel_test_plugin")]:
        del sys.modules[module]


def test_entry_point_plugin_is_found_and_built(site_dir):
    (site_dir / "kestrel_test_plugin.py").write_text(PLUGIN)
    _install_distribution(site_dir, "kestrel_test_plugin", """
        [kestrel.backbones]
        two_level_net = kestrel_test_plugin:two_level_net
    """)
    assert "two_level_net" in list_backbones()
    model = build_backbone("two_level_net", width=4)
    assert model.feature_info.channels() == [4, 8]
    out = model(torch.randn(1, 3, 33, 33))
    backbones.check_pyramid_output(model, out, (33, 33))


def test_broken_plugin_warns_and_the_rest_keep_working(site_dir):
    (site_dir / "kestrel_test_plugin.py").write_text(PLUGIN)
    _install_distribution(site_dir, "kestrel_test_plugin", """
        [kestrel.backbones]
        two_level_net = kestrel_test_plugin:two_level_net
        broken_net = kestrel_test_plugin_missing_module:factory
        mobilenet_v2 = kestrel_test_plugin:two_level_net
    """)
    with pytest.warns(UserWarning) as record:
        names = list_backbones()
    messages = " | ".join(str(w.message) for w in record)
    assert "backbone plugin 'broken_net'" in messages and "from kestrel_test_plugin" in messages
    assert "failed to load: ModuleNotFoundError" in messages
    assert "backbone plugin 'mobilenet_v2'" in messages and "the name is taken" in messages
    assert "two_level_net" in names and "broken_net" not in names
    assert type(build_backbone("mobilenet_v2")).__name__ == "TorchvisionBackbone"


def test_table(capsys):
    assert table_main(["--size", "64", "mobilenet_v3_small", "timm:mobilenetv4_conv_small", "nope"]) == 0
    out = capsys.readouterr().out
    assert "| mobilenet_v3_small | 0.93 |" in out
    assert "C5:576/32" in out and "timm:mobilenetv4_conv_small" in out
    assert "| nope | - |" in out and "unknown backbone" in out
