"""A user's mistake ends a command with one line that names the problem, and a non-zero exit; the traceback
only with ``--verbose`` or ``KESTREL_VERBOSE=1``."""

import sys
from pathlib import Path

import pytest

from tasks import detect, pose, segment
from tasks.cli import main, user_message

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "configs" / "demo"


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and err[0].endswith("(--verbose shows the traceback)"), err
    return err[0]


@pytest.fixture(scope="module")
def data(shapes):
    return shapes


def test_unknown_backbone_is_one_line_naming_the_valid_ones(data, tmp_path, capsys):
    args = ["fit", "--config", str(DEMO / "ssdlite_mbv3_shapes.yaml"), "--model.backbone.name", "mobilenet_v9",
            "--data.root", str(data / "coco"), "--trainer.default_root_dir", str(tmp_path)]
    assert main(detect.cli_main, args) == 1
    line = one_line(capsys)
    assert "unknown backbone 'mobilenet_v9'. Did you mean 'mobilenet_v2'" in line and "mobilenet_v3_large" in line
    assert "Union subtypes" not in line


@pytest.mark.parametrize("module, config", [(detect, "ssdlite_mbv3_shapes"), (segment, "deeplabv3plus_mbv2_shapes"),
                                            (pose, "pose_mbv2_shapes")])
def test_missing_data_and_checkpoints_name_the_file(module, config, tmp_path, capsys):
    base = ["--config", str(DEMO / f"{config}.yaml"), "--data.root", str(tmp_path / "nowhere"),
            "--trainer.default_root_dir", str(tmp_path)]
    assert main(module.cli_main, ["test", *base, "--ckpt_path", str(tmp_path / "gone.ckpt")]) == 1
    assert f"--ckpt_path {tmp_path / 'gone.ckpt'}: no such file" in one_line(capsys)
    assert main(module.cli_main, ["test", *base, "--ckpt_path", "best"]) == 1
    assert f"no best.ckpt under {tmp_path}" in one_line(capsys)
    assert main(module.cli_main, ["validate", *base]) == 1
    assert str(tmp_path / "nowhere") in one_line(capsys)


def test_verbose_shows_the_traceback(data, tmp_path, monkeypatch, capsys):
    """What ``python -m tasks.detect`` runs, with its arguments in ``sys.argv``: one line and exit status 1, or
    with ``--verbose`` the error itself (its traceback)."""
    args = ["fit", "--config", str(DEMO / "ssdlite_mbv3_shapes.yaml"), "--model.backbone.name", "mobilenet_v9",
            "--data.root", str(data / "coco"), "--trainer.default_root_dir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", ["tasks/detect.py", *args])
    assert main(detect.cli_main) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("error: unknown backbone 'mobilenet_v9'")
    monkeypatch.setattr(sys, "argv", ["tasks/detect.py", *args, "--verbose"])
    with pytest.raises(ValueError, match="unknown backbone 'mobilenet_v9'"):
        main(detect.cli_main)


def test_user_message_finds_the_sentence():
    try:
        try:
            raise ValueError("mask 'a.png' has class index 9; the data has 4 classes")
        except ValueError as inner:
            raise ValueError("Does not validate against any of the Union subtypes\nSubtypes: [...]") from inner
    except ValueError as err:
        assert user_message(err) == "mask 'a.png' has class index 9; the data has 4 classes"
    worker = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                        "last):\n  File \"x.py\", line 1, in f\nValueError: image 'b.jpg' is empty (0 bytes)\n")
    assert user_message(worker) == "image 'b.jpg' is empty (0 bytes)"


def test_init_from_fetches_no_imagenet_weights(data, tmp_path, hub_dir, capsys):
    """Whole-model weights overwrite the backbone's: with init_from, pretrained: true loads (and fetches) nothing."""
    base = ["--config", str(DEMO / "ssdlite_mbv3_shapes.yaml"), "--data.root", str(data / "coco"),
            "--data.image_size", "64", "--data.batch_size", "2", "--data.num_workers", "0",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    assert main(detect.cli_main, ["fit", *base, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]) == 0
    weights = next((tmp_path / "run").glob("lightning_logs/version_0/checkpoints/last.ckpt"))  # no validation: last
    capsys.readouterr()
    args = ["validate", *base, "--model.init_from", str(weights), "--model.backbone.pretrained", "true"]
    assert main(detect.cli_main, args) == 0, capsys.readouterr().err
    assert f"model.backbone.pretrained True is not loaded: model.init_from {weights}" in capsys.readouterr().out
    assert not (hub_dir / "checkpoints").exists() or not any((hub_dir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def detector_checkpoint(data, tmp_path_factory):
    """A checkpoint of a one-step detection run on MobileNetV3-Small (no validation: last.ckpt)."""
    run_dir = tmp_path_factory.mktemp("detector")
    args = ["fit", "--config", str(DEMO / "ssdlite_mbv3_shapes.yaml"), "--data.root", str(data / "coco"),
            "--data.image_size", "64", "--data.batch_size", "2", "--data.num_workers", "0",
            "--model.backbone.name", "mobilenet_v3_small", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(run_dir), "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0"]
    assert main(detect.cli_main, args) == 0
    return next(run_dir.glob("lightning_logs/version_0/checkpoints/last.ckpt"))


def test_truncated_foreign_and_other_backbone_checkpoints(data, detector_checkpoint, tmp_path, capsys):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(detector_checkpoint.read_bytes()[:50_000])
    base = ["--config", str(DEMO / "ssdlite_mbv3_shapes.yaml"), "--data.root", str(data / "coco"),
            "--trainer.default_root_dir", str(tmp_path)]
    assert main(detect.cli_main, ["test", *base, "--ckpt_path", str(truncated)]) == 1
    assert f"checkpoint {str(truncated)!r} cannot be read: truncated, or not a PyTorch checkpoint" in one_line(capsys)

    segment_args = ["test", "--config", str(DEMO / "deeplabv3plus_mbv2_shapes.yaml"), "--data.root",
                    str(data / "voc"), "--trainer.default_root_dir", str(tmp_path), "--ckpt_path",
                    str(detector_checkpoint)]
    assert main(segment.cli_main, segment_args) == 1
    assert (f"checkpoint {str(detector_checkpoint)!r} does not hold a SegmentationTask: its head is "
            "heads.ssdlite.SSDLite, this task's a DeepLabV3Plus") in one_line(capsys)

    assert main(detect.cli_main, ["test", *base, "--model.init_from", str(detector_checkpoint)]) == 1
    line = one_line(capsys)
    assert (f"weights {str(detector_checkpoint)!r} are a checkpoint of backbone 'mobilenet_v3_small', this model's "
            "backbone is 'mobilenet_v3_large'") in line and len(line) < 700


def test_fit_help_names_the_backbones(capsys):
    with pytest.raises(SystemExit):
        detect.cli_main(["fit", "--help"])
    text = capsys.readouterr().out
    assert "model.backbone.name: one of efficientnet_b0," in " ".join(text.split())
    assert "mobilenet_v3_large" in text and "ofa_mbv3" in text
    assert "torch.nn.Linear" not in text and len(text.splitlines()) < 1000  # not every nn.Module subclass


def test_imagenet_weights_offline_are_one_line_saying_where_to_put_them(data, tmp_path, hub_dir, capsys):
    args = ["fit", "--config", str(DEMO / "ssdlite_mbv3_shapes.yaml"), "--data.root", str(data / "coco"),
            "--model.backbone.pretrained", "true", "--trainer.default_root_dir", str(tmp_path)]
    assert main(detect.cli_main, args) == 1
    line = one_line(capsys)
    assert "torchvision's ImageNet weights for mobilenet_v3_large" in line and f"put it at {hub_dir}" in line


@pytest.mark.parametrize("extra, says", [
    (["--trainer.max_epocs", "3"], "error: unknown option --trainer.max_epocs; did you mean --trainer.max_epochs?"),
    (["--data.imag_size", "96"], "error: unknown option --data.imag_size; did you mean --data.image_size?"),
    (["--model.backbone.nmae", "x"], "error: model.backbone has no option 'nmae'; did you mean --model.backbone.name?"),
])
def test_a_mistyped_option_is_one_line_with_a_suggestion(data, tmp_path, capsys, extra, says):
    args = ["fit", "--config", str(DEMO / "ssdlite_mbv3_shapes.yaml"), "--data.root", str(data / "coco"),
            "--trainer.default_root_dir", str(tmp_path), *extra]
    with pytest.raises(SystemExit) as stop:
        main(detect.cli_main, args)
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == f"{says} (--help lists the options)", err


def test_bad_files_and_values_are_one_line_naming_them(data, tmp_path, capsys):
    base = ["--data.root", str(data / "coco"), "--trainer.default_root_dir", str(tmp_path)]
    config = tmp_path / "broken.yaml"
    config.write_text("model:\n  backbone: [\n")
    assert main(detect.cli_main, ["test", "--config", str(config), *base]) == 1
    assert f"config {config} is not valid YAML at line 3, column 1" in one_line(capsys)
    demo = ["--config", str(DEMO / "ssdlite_mbv3_shapes.yaml")]
    assert main(detect.cli_main, ["test", *demo, *base, "--data.image_size", "0"]) == 1
    assert "--data.image_size is an image side in pixels, at least 32; got 0" in one_line(capsys)
    assert main(detect.cli_main, ["export", *demo, *base, "--int8", "true", "--calibration_images", "0"]) == 1
    assert "--calibration_images is how many training images INT8 calibrates on, at least 1; got 0" in one_line(capsys)
    root = tmp_path / "latin1"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_val2017.json").write_bytes('{"images": "caf\u00e9"}'.encode("latin-1"))
    assert main(detect.cli_main, ["test", *demo, *base, "--data.root", str(root)]) == 1
    assert "instances_val2017.json' is not UTF-8 text" in one_line(capsys)


def test_an_openvino_model_without_its_weights_is_one_line(tmp_path):
    from tasks.deploy.runtime import ExportedModel

    (tmp_path / "model.xml").write_text("<net/>")
    with pytest.raises(FileNotFoundError, match="has no weights file model.bin beside it"):
        ExportedModel(tmp_path / "model.xml")
