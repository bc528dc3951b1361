"""Every shipped config parses with its task's command line (unknown keys and wrong types fail here)."""

import importlib
from pathlib import Path

import pytest
import yaml

from tasks.from_config import config_task

ROOT = Path(__file__).parents[1] / "configs"
CONFIGS = sorted(ROOT.rglob("*.yaml"))


def test_every_config_belongs_to_a_task():
    assert CONFIGS and all(config_task(p) in ("detect", "segment", "pose") for p in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses(config, capsys):
    task = importlib.import_module(f"tasks.{config_task(config)}")
    with pytest.raises(SystemExit) as exit_info:
        task.cli_main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    given = yaml.safe_load(config.read_text())
    assert printed["model"]["backbone"]["init_args"]["name"] == given["model"]["backbone"]["name"]
    assert printed["data"]["root"] == given["data"]["root"]
    assert printed["trainer"]["max_epochs"] == given["trainer"]["max_epochs"]
