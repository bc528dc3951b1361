"""A backbone module from any importable package, given by ``class_path``, and the README's examples."""

import re
from pathlib import Path

import pytest
from cli_runs import demo_args

from tasks.detect import cli_main

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def data(shapes):
    return shapes / "coco"


def _args(data, run_dir, backbone):
    return demo_args("ssdlite_mbv3_shapes", data, run_dir, "128", "--trainer.max_epochs", "1",
                     "--model.backbone", backbone)


def test_a_class_path_backbone_that_keeps_the_contract_trains(data, tmp_path):
    cli_main(["fit", *_args(data, tmp_path, '{"class_path": "example_backbones.GoodNet", "init_args": {"width": 8}}')])
    assert next(tmp_path.glob("lightning_logs/version_0/checkpoints/last.ckpt")).is_file()


@pytest.mark.parametrize("name,message", [
    ("NoInfoNet", "example_backbones.NoInfoNet does not satisfy Kestrel's pyramid contract: it has no `feature_info`"),
    ("ListNet", "example_backbones.ListNet does not satisfy .*must return an OrderedDict of named levels, got list"),
])
def test_a_class_path_backbone_that_breaks_the_contract_is_told_what_is_missing(data, tmp_path, name, message):
    with pytest.raises((TypeError, ValueError), match=message):
        cli_main(["fit", *_args(data, tmp_path, f'{{"class_path": "example_backbones.{name}"}}')])


def _readme_examples(section: str) -> list[str]:
    readme = (ROOT / "README.md").read_text()
    start = readme.index(f"\n## {section}\n")
    end = readme.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", readme[start:end if end > 0 else None], flags=re.S)


@pytest.mark.parametrize("section", ["Use Kestrel backbones in your repo", "Plug your backbone into Kestrel"])
def test_readme_examples_run(section, monkeypatch):
    monkeypatch.chdir(ROOT)
    examples = _readme_examples(section)
    assert examples
    for code in examples:
        exec(compile(code, f"README.md ({section})", "exec"), {"__name__": "readme_example"})
