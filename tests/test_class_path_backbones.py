"""A backbone module from any importable package, given by ``class_path``."""

import pytest
from cli_runs import demo_args

from tasks.detect import cli_main


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

