"""``python -m tasks.detect`` end to end, in-process: fit, test, predict on a few synthetic images."""

import csv
import json
from pathlib import Path

import pytest
from cli_runs import check_report, demo_args, latest_version

from tasks.data.synthetic import CATEGORIES, VOC_SYNTHETIC_CLASSES, generate
from tasks.detect import cli_main

CONFIG = str(Path(__file__).parents[1] / "configs" / "demo" / "ssdlite_mbv3_shapes.yaml")


def small(root, run_dir, *extra):
    """The demo config at 128 px, for seconds."""
    return demo_args("ssdlite_mbv3_shapes", root, run_dir, "128", *extra)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("shapes"), train=12, val=5, seed=3, progress=False)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cli_main(["fit", *small(data / "coco", run_dir, "--trainer.max_epochs", "5", "--trainer.log_every_n_steps", "1",
                            "--data.augment", "none", "--model.scheduler.init_args.warmup_steps", "3")])
    return run_dir



def test_fit_lowers_the_loss_and_keeps_checkpoints(trained):
    version = latest_version(trained)
    rows = list(csv.DictReader(open(version / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) >= 10
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert any(r.get("val/map") for r in rows)
    assert (version / "checkpoints" / "best.ckpt").is_file() and (version / "checkpoints" / "last.ckpt").is_file()


def test_test_writes_the_report(data, trained, capsys):
    cli_main(["test", *small(data / "coco", trained, "--ckpt_path", "best")])
    out = capsys.readouterr().out
    report = latest_version(trained) / "report"
    assert f"Evaluation report: {report / 'report.md'}" in out
    headline = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100"]
    metrics = check_report(report, headline, {"per_class_ap", "precision_recall", "samples"},
                           backbone="mobilenet_v3_large")
    for key in headline:
        assert metrics[key] is None or 0.0 <= metrics[key] <= 1.0, key
    assert metrics["map_50"] is not None
    assert set(metrics["per_class"]) == set(CATEGORIES.values())
    assert all(set(v) == {"ap", "ap_50"} for v in metrics["per_class"].values())
    markdown = (report / "report.md").read_text()
    for name, values in metrics["per_class"].items():
        shown = " | ".join("n/a" if values[k] is None else f"{values[k]:.4f}" for k in ("ap", "ap_50"))
        assert f"| {name} | {shown} |" in markdown


def test_predict_writes_coco_results_with_the_data_sets_ids(data, trained):
    cli_main(["predict", *small(data / "coco", trained, "--ckpt_path", "last")])
    detections = json.loads((latest_version(trained) / "predictions" / "detections.json").read_text())
    gt = json.loads((data / "coco" / "annotations" / "instances_val2017.json").read_text())
    image_ids = {im["id"] for im in gt["images"]}
    assert detections and {d["image_id"] for d in detections} <= image_ids
    assert {d["category_id"] for d in detections} <= set(CATEGORIES)
    for d in detections[:50]:
        assert len(d["bbox"]) == 4 and d["bbox"][2] >= 0 and 0 <= d["score"] <= 1


def test_predict_on_a_folder_of_images(data, trained):
    cli_main(["predict", *small(data / "coco", trained, "--ckpt_path", "last",
                                "--data.predict_dir", str(data / "coco" / "val2017"))])
    detections = json.loads((latest_version(trained) / "predictions" / "detections.json").read_text())
    names = {p.name for p in (data / "coco" / "val2017").iterdir()}
    assert detections and {d["image_id"] for d in detections} <= names


def test_voc_data_adds_voc_metrics(data, trained):
    ckpt = next(latest_version(trained).parent.glob("version_0/checkpoints/best.ckpt"))
    cli_main(["test", *small(data / "voc", trained, "--data.format", "voc", "--data.classes",
                             json.dumps(VOC_SYNTHETIC_CLASSES), "--model.init_from", str(ckpt))])
    metrics = json.loads((latest_version(trained) / "report" / "metrics.json").read_text())
    assert 0.0 <= metrics["voc07_map_50"] <= 1.0 and 0.0 <= metrics["voc12_map_50"] <= 1.0
    assert set(metrics["per_class"]["circle"]) == {"ap", "ap_50", "voc07_ap_50", "voc12_ap_50"}


def test_print_config_shows_the_contract_keys(data, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["fit", "--config", CONFIG, "--data.root", str(data / "coco"), "--model.backbone.name",
                  "efficientnet_b0", "--print_config"])
    assert exit_.value.code == 0
    printed = capsys.readouterr().out
    for line in ("name: efficientnet_b0", "pretrained: false", "format: coco", "image_size: 192", "max_epochs:"):
        assert line in printed


def test_wrong_backbone_name_is_a_clear_error(data, tmp_path):
    with pytest.raises(ValueError, match="unknown backbone 'mobilenet_v5'.*Registered backbones"):
        cli_main(["fit", *small(data / "coco", tmp_path, "--model.backbone.name", "mobilenet_v5")])


@pytest.mark.parametrize("devices", [2])
def test_ddp_metrics_equal_a_single_process(data, trained, tmp_path, devices):
    """Two gloo processes on the CPU (5 validation images: the sampler pads one) report the same numbers."""
    ckpt = str(latest_version(trained).parent / "version_0" / "checkpoints" / "best.ckpt")
    single, double = tmp_path / "single", tmp_path / "double"
    cli_main(["test", *small(data / "coco", single, "--model.init_from", ckpt)])
    cli_main(["test", *small(data / "coco", double, "--model.init_from", ckpt, "--data.batch_size", "2",
                             "--trainer.strategy", "ddp_spawn", "--trainer.devices", str(devices))])
    one = json.loads((latest_version(single) / "report" / "metrics.json").read_text())
    two = json.loads((latest_version(double) / "report" / "metrics.json").read_text())
    assert one["map"] > 0
    for key in one:
        if key != "per_class":
            assert two[key] == pytest.approx(one[key], abs=1e-6), key
    for name, values in one["per_class"].items():
        assert two["per_class"][name] == pytest.approx(values, abs=1e-6), name
