"""``python -m tasks.detect`` end to end, in-process: fit, test, predict on a few synthetic images."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_runs import check_report, demo_args, latest_version, read_metrics
from PIL import Image

from tasks.benchmark.__main__ import main as benchmark
from tasks.benchmark.timing import torch_threads
from tasks.cli import main
from tasks.data.synthetic import CATEGORIES, VOC_SYNTHETIC_CLASSES
from tasks.deploy.agreement import agreement, faithful
from tasks.deploy.export import write_onnx_metadata
from tasks.deploy.mobile import fit_image
from tasks.deploy.predictor import Detector
from tasks.deploy.quantize import conv_nodes
from tasks.deploy.runtime import ExportedModel, read_metadata, run_images
from tasks.detect import DetectionTask, cli_main

CONFIG = str(Path(__file__).parents[1] / "configs" / "demo" / "ssdlite_mbv3_shapes.yaml")


def small(root, run_dir, *extra):
    """The demo config at 128 px, for seconds."""
    return demo_args("ssdlite_mbv3_shapes", root, run_dir, "128", *extra)


@pytest.fixture(scope="module")
def data(shapes):
    return shapes


@pytest.fixture(scope="module")
def trained(detector_run):
    return detector_run


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
    metrics = check_report(report, headline, {"per_class_ap", "precision_recall", "samples", "learning_curves"},
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
    drawn = latest_version(trained) / "predictions" / "images"  # each image with its detections drawn
    gt_files = sorted(im["file_name"] for im in gt["images"])
    assert sorted(p.name for p in drawn.iterdir()) == gt_files
    for name in gt_files:
        with Image.open(drawn / name) as picture, Image.open(data / "coco" / "val2017" / name) as original:
            assert picture.size == original.size


def test_predict_on_a_folder_of_images(data, trained, capsys):
    cli_main(["predict", *small(data / "coco", trained, "--ckpt_path", "last",
                                "--data.predict_dir", str(data / "coco" / "val2017"), "--draw", "false")])
    detections = json.loads((latest_version(trained) / "predictions" / "detections.json").read_text())
    names = {p.name for p in (data / "coco" / "val2017").iterdir()}
    assert detections and {d["image_id"] for d in detections} <= names
    assert not (latest_version(trained) / "predictions" / "images").exists()  # --draw false: the JSON only
    assert "drawn" not in capsys.readouterr().out


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


def test_ddp_fit_trains_and_ddp_test_equals_a_single_process(data, trained, tmp_path):
    """Two gloo processes through the command line: ``fit`` trains (the loss is logged, checkpoints are written
    once), and ``test`` of the shared detector gives the single-process report (4 of the 8 validation images
    each, in batches of 3)."""
    run_dir = tmp_path / "ddp"
    cli_main(["fit", *small(data / "coco", run_dir, "--data.batch_size", "2", "--trainer.max_epochs", "1",
                            "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2",
                            "--trainer.log_every_n_steps", "1", "--data.augment", "ssdlite")])
    [version] = (run_dir / "lightning_logs").glob("version_*")
    assert sorted(p.name for p in (version / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    rows = list(csv.DictReader(open(version / "metrics.csv")))
    assert [r["train/loss"] for r in rows if r.get("train/loss")] and [r for r in rows if r.get("val/map")]
    ckpt = str(version / "checkpoints" / "last.ckpt")
    assert torch.load(ckpt, weights_only=False)["global_step"] == 4  # 16 images / (2 x 2) per step
    single, double = tmp_path / "single", tmp_path / "double"
    with torch_threads(1):  # as each DDP process: convolutions summed by other thread counts differ in the last bits
        cli_main(["test", *small(data / "coco", single, "--model.init_from", best_checkpoint(trained))])
    cli_main(["test", *small(data / "coco", double, "--model.init_from", best_checkpoint(trained),
                             "--data.batch_size", "3", "--trainer.strategy", "ddp_spawn", "--trainer.devices", "2")])
    one, two = read_metrics(single), read_metrics(double)
    assert one["map_50"] > 0.3, "degenerate comparison"
    for key in one:
        if key != "per_class":
            assert two[key] == pytest.approx(one[key], abs=1e-6), key
    for name, values in one["per_class"].items():
        assert two["per_class"][name] == pytest.approx(values, abs=1e-6), name


# ----------------------------------------------------------------------------- shipping
@pytest.fixture(scope="module")
def checkpoint_metrics(data, trained):
    """The best checkpoint's test numbers, in a run folder of their own."""
    run_dir = trained.parent / "checkpoint_test"
    cli_main(["test", *small(data / "coco", run_dir, "--model.init_from", best_checkpoint(trained))])
    return read_metrics(run_dir)


def best_checkpoint(trained) -> str:
    return str(trained / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt")


@pytest.fixture(scope="module")
def onnx_file(data, trained) -> Path:
    """The best checkpoint exported to ONNX once, through the command line, into its run's ``export/`` folder."""
    cli_main(["export", *small(data / "coco", trained, "--ckpt_path", "best")])
    return trained / "lightning_logs" / "version_0" / "export" / "model.onnx"


def export(data, trained, capsys, *extra) -> Path:
    """``export`` through the command line; the path it printed on its last line."""
    capsys.readouterr()
    cli_main(["export", *small(data / "coco", trained, "--ckpt_path", "best", *extra)])
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path.is_file() or path.suffix == ".mlpackage" and path.is_dir()
    return path


# ExecuTorch through the command line under the slow marker (a minute to lower; test_mobile lowers a small detector)
@pytest.mark.parametrize("fmt,suffix", [("onnx", "model.onnx"), ("openvino", "model.xml"),
                                        pytest.param("executorch", "model.pte", marks=pytest.mark.slow),
                                        ("tflite", "model.tflite")])
def test_the_export_scores_what_the_checkpoint_scores(data, trained, checkpoint_metrics, capsys, tmp_path, fmt,
                                                     suffix):
    path = export(data, trained, capsys, "--format", fmt)
    assert path == trained / "lightning_logs" / "version_0" / "export" / suffix  # the checkpoint's run
    metadata = read_metadata(path)
    assert metadata["task"] == "detect" and metadata["input_size"] == [128, 128]
    assert metadata["class_names"] == ["person", "circle", "square", "triangle"]
    assert metadata["category_ids"] == sorted(CATEGORIES) and metadata["precision"] == "fp32"
    run_dir = tmp_path / "exported"
    cli_main(["test", *small(data / "coco", run_dir, "--ckpt_path", str(path))])
    metrics = read_metrics(run_dir)
    # a phone file takes images resized to its one input size and rounded to uint8, as an app gives them: on this
    # barely trained detector (mAP ~0.2) that moves mAP by up to 0.003 (on the demo detector by 0.0001,
    # docs/guides/export.md)
    tolerance = 0.01 if fmt in ("executorch", "tflite") else 0.002
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert metrics[key] == pytest.approx(checkpoint_metrics[key], abs=tolerance), key
    report = (latest_version(run_dir) / "report" / "report.md").read_text()
    runtime = {"onnx": "onnxruntime", "openvino": "openvino", "executorch": "executorch",
               "tflite": "ai-edge-litert"}[fmt]
    assert f"| runtime | {runtime} " in report and f"| model file | {path} |" in report
    files = (path, path.with_suffix(".bin")) if fmt == "openvino" else (path,)
    weights = sum(f.stat().st_size for f in files) / 1e6
    assert f"| model file size (MB) | {weights:.2f} |" in report  # OpenVINO: the .xml and its .bin
    if fmt == "tflite":
        the_tflite_detector_has_the_four_outputs_of_tflites_detection_post_processing(path, data)


def the_tflite_detector_has_the_four_outputs_of_tflites_detection_post_processing(path: Path, data: Path) -> None:
    """uint8 NHWC in; boxes as normalized ymin, xmin, ymax, xmax, 0-based classes, scores, count: all float32
    (Kestrel's runtime reads them back into its boxes and labels, which the test above scored)."""
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=1).get_signature_runner()
    ((name, details),) = runner.get_input_details().items()
    assert details["dtype"] == np.uint8 and tuple(details["shape"]) == (1, 128, 128, 3)
    image = torch.from_numpy(np.asarray(Image.open(sorted((data / "coco" / "val2017").iterdir())[0]).convert("RGB")))
    image = fit_image(image.permute(2, 0, 1), [128, 128])
    out = runner(**{name: image.permute(1, 2, 0)[None].numpy()})
    boxes, classes, scores, count = (torch.from_numpy(out[f"output_{i}"]) for i in range(4))
    assert all(value.dtype == torch.float32 for value in (boxes, classes, scores, count))
    assert boxes.shape == (1, 300, 4) and classes.shape == scores.shape == (1, 300) and count.shape == (1,)
    (mine,) = run_images(ExportedModel(path), [image])
    n = int(count[0])
    assert 0 < n == len(mine["boxes"])
    x0, y0, x1, y1 = mine["boxes"].unbind(-1)
    assert torch.allclose(boxes[0, :n], torch.stack([y0, x0, y1, x1], -1) / 128, atol=1e-6)
    assert torch.equal(classes[0, :n], (mine["labels"] - 1).float()) and torch.equal(scores[0, :n], mine["scores"])


def test_int8_is_smaller_and_close(data, trained, checkpoint_metrics, onnx_file, capsys, tmp_path):
    fp32 = onnx_file
    int8 = export(data, trained, capsys, "--int8", "true")
    assert int8.name == "model_int8.onnx" and int8.stat().st_size <= 0.4 * fp32.stat().st_size
    metadata = read_metadata(int8)
    assert metadata["precision"] == "int8" and metadata["int8"]["calibration_images"] == 16  # the training split
    capsys.readouterr()
    cli_main(["test", *small(data / "coco", tmp_path, "--ckpt_path", str(int8))])
    assert read_metrics(tmp_path)["map_50"] == pytest.approx(checkpoint_metrics["map_50"], abs=0.05)
    # the float checkpoint it came from, scored beside it on the same images
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("INT8 file: map"))
    mine, reference = read_metrics(tmp_path)["map"], checkpoint_metrics["map"]
    assert line.startswith(f"INT8 file: map {mine:.4f}; its float reference in PyTorch (")
    assert line.endswith(f") {reference:.4f} on the same images: {mine - reference:+.4f}"), line
    report = (latest_version(tmp_path) / "report" / "report.md").read_text()
    assert f"| float reference (PyTorch) | map {reference:.4f} (" in report
    assert metadata["int8"]["calibration"] == "percentile"
    assert metadata["int8"]["kept_in_float"] == ["first_conv", "last_convs"]
    assert float_convs(int8) == {*conv_nodes(onnx.load(str(fp32)), "first_conv"),
                                 *conv_nodes(onnx.load(str(fp32)), "last_convs")}


def test_int8_max_drop_keeps_the_fewest_layers_in_float_that_hold_the_bound(data, trained, capsys, tmp_path):
    """A loose bound keeps every layer INT8; a bound of 0 holds, the layers kept in float are those the metadata and
    the report name, and the file scores what the search measured (the search itself: test_int8_fallback)."""
    loose = export(data, trained, capsys, "--int8", "true", "--int8_max_drop", "1", "--output",
                   str(tmp_path / "loose.onnx"))
    record = read_metadata(loose)["int8"]
    assert record["kept_in_float"] == [] and float_convs(loose) == set()
    assert list(record["fallback"]["searched"]) == ["0"]
    tight = export(data, trained, capsys, "--int8", "true", "--int8_max_drop", "0", "--output",
                   str(tmp_path / "tight.onnx"))
    record = read_metadata(tight)["int8"]
    found = record["fallback"]
    assert float_convs(tight) == set(record["kept_in_float"]) and list(found["sensitivity"]) == record["kept_in_float"]
    assert found["int8"] >= found["float"] and found["metric"] == "map"
    cli_main(["test", *small(data / "coco", tmp_path / "run", "--ckpt_path", str(tight))])  # test split: val's
    assert read_metrics(tmp_path / "run")["map"] == pytest.approx(found["int8"], abs=1e-12)
    report = (latest_version(tmp_path / "run") / "report" / "report.md").read_text()
    assert "| INT8 | " in report and "--int8_max_drop 0" in report


@pytest.mark.parametrize("extra, says", [(["--int8_max_drop", "0.01"], "add --int8 true"),
                                         (["--int8", "true", "--int8_max_drop", "-1"], "at least 0"),
                                         (["--int8", "true", "--int8_max_drop", "0.01", "--format", "tflite"],
                                          "tflite files are not searched yet")])
def test_int8_max_drop_refuses_what_it_cannot_do_in_one_line(data, trained, capsys, tmp_path, extra, says):
    args = ["export", *small(data / "coco", trained, "--ckpt_path", "best", "--output", str(tmp_path / "x"), *extra)]
    assert main(cli_main, args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


@pytest.mark.slow
@pytest.mark.parametrize("fmt,suffix,quantizer,size", [("executorch", ".pte", "XNNPACKQuantizer", [160, 160]),
                                                       ("tflite", ".tflite", "ai-edge-quantizer", [128, 128])])
def test_an_int8_phone_file_is_smaller_and_close(data, trained, checkpoint_metrics, capsys, tmp_path, fmt, suffix,
                                                 quantizer, size):
    path = export(data, trained, capsys, "--format", fmt, "--int8", "true", "--input_size", *map(str, size))
    assert path.name == f"model_int8{suffix}"
    metadata = read_metadata(path)
    assert metadata["precision"] == "int8" and metadata["fixed_input_size"] == size
    assert quantizer in metadata["int8"]["quantizer"]
    cli_main(["test", *small(data / "coco", tmp_path, "--ckpt_path", str(path))])
    assert read_metrics(tmp_path)["map_50"] == pytest.approx(checkpoint_metrics["map_50"], abs=0.05)


@pytest.mark.slow  # 40 s: coremltools converts 300 candidates' NMS; test_mobile converts a small detector
def test_a_core_ml_package_is_written_checked_and_refused_by_test_in_one_line(data, trained, capsys, tmp_path):
    path = export(data, trained, capsys, "--format", "coreml", "--input_size", "160", "160")  # int8: test_mobile
    assert path.name == "model.mlpackage"
    metadata = read_metadata(path)
    assert metadata["format"] == "coreml" and metadata["fixed_input_size"] == [160, 160]
    assert metadata["class_names"] == ["person", "circle", "square", "triangle"]
    code = main(cli_main, ["test", *small(data / "coco", tmp_path, "--ckpt_path", str(path))])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and error[-1].startswith(f"error: {path} is a Core ML package: Core ML runs on Apple devices")


def test_int8_options_reach_the_quantizer(data, trained, capsys, tmp_path):
    every = export(data, trained, capsys, "--int8", "true", "--int8_calibration", "minmax", "--int8_float", "[]",
                   "--calibration_images", "4", "--output", str(tmp_path / "new" / "all.onnx"))
    assert every == tmp_path / "new" / "all.onnx" and float_convs(every) == set()  # its folder made first
    settings = read_metadata(every)["int8"]
    assert (settings["calibration"], settings["kept_in_float"], settings["calibration_images"]) == ("minmax", [], 4)


def float_convs(path: Path) -> set[str]:
    """The convolutions of an ONNX file whose weights are not dequantized from int8."""
    graph = onnx.load(str(path)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    return {node.name for node in graph.node if node.op_type == "Conv" and node.input[1] not in dequantized}


def test_a_checkpoint_alone_rebuilds_the_detector_and_so_does_its_export(data, trained, onnx_file, tmp_path):
    """No config and no data folder: the checkpoint describes itself; its ONNX file predicts the same."""
    onnx_path = shutil.copy(onnx_file, tmp_path / "model.onnx")  # out of the data's reach too
    alone = tmp_path / "alone.ckpt"
    alone.write_bytes(Path(best_checkpoint(trained)).read_bytes())
    images = sorted((data / "coco" / "val2017").iterdir())[:3]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    hidden = data.with_name(data.name + "_hidden")
    data.rename(hidden)  # out of reach while loading
    try:
        task = DetectionTask.load_from_checkpoint(alone)
        assert task.class_names == ["person", "circle", "square", "triangle"] and task.image_size == 128
        detector = Detector.from_checkpoint(alone)
        from_file = Detector.from_checkpoint(onnx_path)
        results, file_results = detector(arrays), from_file(arrays)
    finally:
        hidden.rename(data)
    for image, got in zip(arrays, results):
        assert set(got) == {"boxes", "scores", "labels", "names"}
        assert got["names"] == [detector.class_names[label - 1] for label in got["labels"].tolist()]
        height, width = image.shape[:2]  # boxes in each image's own pixels
        assert len(got["boxes"]) and got["boxes"][:, 2].max() <= width and got["boxes"][:, 3].max() <= height
    assert faithful("detect", agreement("detect", results, file_results, box_tolerance=1e-2))
    assert [len(r["boxes"]) for r in detector(arrays, score_threshold=0.5)] == [
        int((r["scores"] >= 0.5).sum()) for r in results]


def test_exporting_an_exported_file_or_testing_a_foreign_one_is_refused(data, trained, onnx_file, tmp_path):
    path = Path(shutil.copy(onnx_file, tmp_path / "model.onnx"))
    with pytest.raises(ValueError, match="is already exported"):
        cli_main(["export", *small(data / "coco", trained, "--ckpt_path", str(path))])
    other = tmp_path / "other_classes.onnx"
    metadata = read_metadata(path)
    write_onnx_metadata(path.rename(other), {**metadata, "class_names": ["a", "b", "c", "d"]})
    with pytest.raises(ValueError, match="was made for other data: its class_names"):
        cli_main(["test", *small(data / "coco", tmp_path / "run", "--ckpt_path", str(other))])


def test_benchmark_times_the_checkpoint_beside_its_exports(trained, onnx_file, capsys):
    benchmark(["runtimes", best_checkpoint(trained), str(onnx_file), "--size", "60", "80", "--batch", "1", "2",
                "--repeats", "2", "--threads", "1"])
    table = capsys.readouterr().out
    assert "input uint8 60x80" in table and "| runtime | file size (MB) | batch 1 (ms) | batch 2 (ms) |" in table
    rows = [line for line in table.splitlines() if line.startswith("| PyTorch eager") or "model.onnx" in line]
    assert len(rows) == 2 and all(len(row.split("|")) == 6 for row in rows)


def test_export_from_init_from_and_predict_with_the_file(data, trained, capsys, tmp_path):
    """``--model.init_from`` works as for test (the file goes to the new run's export/ folder), and predict
    on the file writes the checkpoint's detections."""
    run_dir = tmp_path / "run"
    capsys.readouterr()
    cli_main(["export", *small(data / "coco", run_dir, "--model.init_from", best_checkpoint(trained))])
    path = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert path.parent.name == "export" and path.parent.parent.parent == run_dir / "lightning_logs"
    found = {}
    for source in (best_checkpoint(trained), str(path)):
        out = tmp_path / Path(source).suffix.strip(".")
        cli_main(["predict", *small(data / "coco", out, "--model.init_from" if source.endswith(".ckpt") else
                                    "--ckpt_path", source)])
        found[source] = json.loads((latest_version(out) / "predictions" / "detections.json").read_text())
    checkpoint, exported = (by_image(entries) for entries in found.values())
    assert checkpoint.keys() == exported.keys() and checkpoint
    stats = agreement("detect", list(checkpoint.values()), [exported[i] for i in checkpoint], box_tolerance=1e-2)
    assert faithful("detect", stats) and stats["max_score_diff"] < 1e-4, stats


def by_image(entries: list[dict]) -> dict:
    """COCO results as per-image detections (boxes x1 y1 x2 y2, scores, category ids as labels)."""
    images = {}
    for image_id in {e["image_id"] for e in entries}:
        mine = [e for e in entries if e["image_id"] == image_id]
        xywh = torch.tensor([e["bbox"] for e in mine])
        images[image_id] = {"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                            "scores": torch.tensor([e["score"] for e in mine]),
                            "labels": torch.tensor([e["category_id"] for e in mine])}
    return images


def test_an_empty_batch_is_one_clear_error_not_a_reshape_deep_in_the_file(onnx_file):
    with pytest.raises(ValueError, match=r"model.onnx takes a batch of at least one image, got an empty one \(0, 3"):
        ExportedModel(onnx_file)(torch.zeros(0, 3, 64, 64, dtype=torch.uint8))
