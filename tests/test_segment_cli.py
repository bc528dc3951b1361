"""``python -m tasks.segment`` end to end, in-process: fit, test, predict on a few synthetic images."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cli_runs import check_report, demo_args, latest_version
from PIL import Image

from tasks.data.synthetic import VOC_SYNTHETIC_CLASSES
from tasks.deploy.agreement import agreement
from tasks.deploy.predictor import Segmenter
from tasks.deploy.runtime import read_metadata
from tasks.segment import SegmentationTask, cli_main


def small(root, run_dir, *extra):
    """The demo config at 96 px, for seconds."""
    return demo_args("deeplabv3plus_mbv2_shapes", root, run_dir, "96", *extra)



@pytest.fixture(scope="module")
def data(shapes):
    return shapes


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cli_main(["fit", *small(data / "voc", run_dir, "--trainer.max_epochs", "5", "--trainer.log_every_n_steps", "1",
                            "--model.scheduler.init_args.warmup_steps", "2")])
    return run_dir


def test_fit_lowers_the_loss(trained):
    rows = list(csv.DictReader(open(latest_version(trained) / "metrics.csv")))
    # the cross-entropy: the demo's Dice term (a mean over classes) falls more slowly over a few tiny batches
    losses = [float(r["train/ce"]) for r in rows if r.get("train/ce")]
    assert any(r.get("train/dice") for r in rows)
    assert len(losses) >= 10 and sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    assert any(r.get("val/miou") for r in rows)
    assert (latest_version(trained) / "checkpoints" / "best.ckpt").is_file()


def test_test_writes_the_report(data, trained, capsys):
    cli_main(["test", *small(data / "voc", trained, "--ckpt_path", "best")])
    assert "Evaluation report:" in capsys.readouterr().out
    report = latest_version(trained) / "report"
    plots = {"per_class_iou", "confusion_matrix", "samples", "learning_curves"}
    metrics = check_report(report, ["miou", "pixel_accuracy"], plots, backbone="mobilenet_v2")
    assert 0.0 <= metrics["miou"] <= 1.0 and 0.0 <= metrics["pixel_accuracy"] <= 1.0
    assert list(metrics["per_class_iou"]) == ["background", *VOC_SYNTHETIC_CLASSES]
    for name, iou in metrics["per_class_iou"].items():
        assert f"| {name} | {'n/a' if iou is None else f'{iou:.4f}'} |" in (report / "report.md").read_text()


def test_predict_writes_a_palette_png_per_image_at_its_size(data, trained):
    cli_main(["predict", *small(data / "voc", trained, "--ckpt_path", "last")])
    folder = latest_version(trained) / "predictions"
    stems = (data / "voc" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert sorted(p.stem for p in folder.glob("*.png")) == sorted(stems)
    for stem in stems:
        with Image.open(folder / f"{stem}.png") as png, Image.open(data / "voc" / "JPEGImages" / f"{stem}.jpg") as im:
            assert png.mode == "P" and png.size == im.size
            assert np.array(png).max() <= len(VOC_SYNTHETIC_CLASSES)
        with Image.open(folder / "images" / f"{stem}.jpg") as drawn, Image.open(folder / f"{stem}.png") as png:
            assert drawn.width == png.width and drawn.height > png.height  # the overlay, a legend below it


def test_coco_format_data(data, trained):
    ckpt = str(latest_version(trained).parent / "version_0" / "checkpoints" / "best.ckpt")
    cli_main(["test", *small(data / "coco", trained, "--data.format", "coco", "--data.classes", "null",
                             "--model.init_from", ckpt)])
    metrics = json.loads((latest_version(trained) / "report" / "metrics.json").read_text())
    assert list(metrics["per_class_iou"]) == ["background", "person", "circle", "square", "triangle"]


# ----------------------------------------------------------------------------- shipping
def test_int8_max_drop_bounds_the_miou_that_test_then_gives(data, trained, tmp_path):
    """The float fallback searches on the task's own metric (mIoU): the bound holds, and ``test`` of the file gives
    the mIoU its metadata records (the test split is the validation split)."""
    best = latest_version(trained).parent / "version_0" / "checkpoints" / "best.ckpt"
    path = tmp_path / "model_int8.onnx"
    cli_main(["export", *small(data / "voc", trained, "--ckpt_path", str(best), "--int8", "true",
                               "--calibration_images", "4", "--int8_max_drop", "0", "--output", str(path))])
    found = read_metadata(path)["int8"]["fallback"]
    assert found["metric"] == "miou" and found["int8"] >= found["float"]
    cli_main(["test", *small(data / "voc", tmp_path / "run", "--ckpt_path", str(path))])
    got = json.loads((latest_version(tmp_path / "run") / "report" / "metrics.json").read_text())
    assert got["miou"] == pytest.approx(found["int8"], abs=1e-12)


def test_the_export_labels_what_the_checkpoint_labels(data, trained, capsys, tmp_path):
    """ONNX and OpenVINO exports score the checkpoint's mIoU; the checkpoint alone and its export predict
    the same label maps; INT8 is smaller."""
    best = latest_version(trained).parent / "version_0" / "checkpoints" / "best.ckpt"
    cli_main(["test", *small(data / "voc", tmp_path / "ckpt", "--model.init_from", str(best))])
    expected = json.loads((latest_version(tmp_path / "ckpt") / "report" / "metrics.json").read_text())
    paths = {}
    int8 = ["--int8", "true", "--calibration_images", "4"]
    for fmt, extra in (("onnx", []), ("openvino", ["--format", "openvino"]), ("int8", int8),
                       ("openvino_int8", ["--format", "openvino", *int8])):
        capsys.readouterr()
        cli_main(["export", *small(data / "voc", trained, "--ckpt_path", str(best), *extra)])
        paths[fmt] = Path(capsys.readouterr().out.strip().splitlines()[-1])
        cli_main(["test", *small(data / "voc", tmp_path / fmt, "--ckpt_path", str(paths[fmt]))])
        got = json.loads((latest_version(tmp_path / fmt) / "report" / "metrics.json").read_text())
        tolerance = 0.05 if "int8" in fmt else 0.002
        assert got["miou"] == pytest.approx(expected["miou"], abs=tolerance), fmt
    # int8 weights; int32 biases and per-channel scales weigh more in the small width-0.5 demo network (0.41)
    assert paths["int8"].stat().st_size <= 0.45 * paths["onnx"].stat().st_size
    assert read_metadata(paths["openvino"])["class_names"] == VOC_SYNTHETIC_CLASSES
    assert paths["openvino_int8"].name == "model_int8.xml"
    assert read_metadata(paths["openvino_int8"])["precision"] == "int8"
    images = [data / "voc" / "JPEGImages" / f"{stem}.jpg"
              for stem in (data / "voc" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:2]]
    task = SegmentationTask.load_from_checkpoint(best)
    assert task.class_names == VOC_SYNTHETIC_CLASSES and task.image_size == 96
    from_checkpoint, from_file = Segmenter.from_checkpoint(best), Segmenter.from_checkpoint(paths["onnx"])
    labels, file_labels = from_checkpoint(images), from_file(images)
    for path, out in zip(images, labels):
        with Image.open(path) as im:
            assert out["labels"].shape == (im.height, im.width)
    assert agreement("segment", labels, file_labels)["pixel_agreement"] >= 0.999
