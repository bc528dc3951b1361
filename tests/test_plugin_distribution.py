"""A third-party backbone from a real installed distribution, used by ``python -m tasks.detect fit`` by name.

The test builds a throwaway distribution that declares a ``kestrel.backbones`` entry point, installs
it into this environment with pip (no index, no network), trains one step through the command line
in a fresh process, and uninstalls it.
"""

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

CONFIG = str(Path(__file__).parents[1] / "configs" / "demo" / "ssdlite_mbv3_shapes.yaml")

PLUGIN = '''
"""A tiny third-party backbone: three stride-2 stages after a stride-4 stem."""
from collections import OrderedDict

from torch import nn

from backbones import FeatureInfo, Level, Pyramid


class TinyNet(Pyramid):
    def __init__(self, levels=(8, 16, 32)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 4, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.stages = nn.ModuleList()
        channels, info, stride = 16, [], 4
        for i, width in enumerate((24, 48, 96)):
            stride *= 2
            self.stages.append(nn.Sequential(nn.Conv2d(channels, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU()))
            if stride in levels:
                info.append(Level(f"C{i + 3}", width, stride, f"stages.{i}"))
            channels = width
        self.feature_info = FeatureInfo(info)

    def forward(self, x):
        x = self.stem(x)
        out = OrderedDict()
        for stage, name in zip(self.stages, ("C3", "C4", "C5")):
            x = stage(x)
            if name in [level.name for level in self.feature_info]:
                out[name] = x
        return out


def tiny_net(levels=(8, 16, 32)):
    return TinyNet(levels)
'''


@pytest.fixture
def installed_plugin(tmp_path):
    suffix = uuid.uuid4().hex[:8]
    module, backbone = f"kestrel_test_plugin_{suffix}", f"tiny_net_{suffix}"
    source = tmp_path / "plugin"
    source.mkdir()
    (source / f"{module}.py").write_text(PLUGIN)
    (source / "pyproject.toml").write_text(textwrap.dedent(f"""
        [build-system]
        requires = ["setuptools"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "kestrel-test-plugin-{suffix}"
        version = "0.1"

        [tool.setuptools]
        py-modules = ["{module}"]

        [project.entry-points."kestrel.backbones"]
        {backbone} = "{module}:tiny_net"
    """))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run([*pip, "install", "--no-index", "--no-deps", "--no-build-isolation", str(source)], check=True,
                   cwd=tmp_path)
    try:
        yield backbone
    finally:
        subprocess.run([*pip, "uninstall", "--yes", f"kestrel-test-plugin-{suffix}"], check=True, cwd=tmp_path)


def test_an_installed_plugin_backbone_trains_through_the_command_line(installed_plugin, shapes, tmp_path):
    data = shapes
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "tasks.detect", "fit", "--config", CONFIG, "--data.root", str(data / "coco"),
        "--data.image_size", "128", "--data.batch_size", "4", "--data.num_workers", "0",
        "--model.backbone.name", installed_plugin, "--model.backbone.feature_location", "block",
        "--model.backbone.options", "{}", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(run_dir),
    ]
    done = subprocess.run(command, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    config = (next(run_dir.glob("lightning_logs/version_0/config.yaml"))).read_text()
    assert f"name: {installed_plugin}" in config
    checkpoint = next(run_dir.glob("lightning_logs/version_0/checkpoints/last.ckpt"))
    assert checkpoint.stat().st_size > 0
    listed = subprocess.run([sys.executable, "-c", "from backbones import list_backbones; print(list_backbones())"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert installed_plugin in listed.stdout, listed.stderr[-2000:]
