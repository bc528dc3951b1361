"""``python -m tasks.benchmark``: every form of a trained detector timed, scored and compared, torchvision's
references beside it; the machine stated; the grid; the training rates."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from cli_runs import DEMO_CONFIGS, read_metrics
from PIL import Image

from tasks.benchmark import grid, machine_line, run, training
from tasks.benchmark.__main__ import main
from tasks.benchmark.machine import describe_machine, has_int8_instructions
from tasks.benchmark.page import write_page
from tasks.benchmark.subjects import reference_subject
from tasks.benchmark.timing import interleaved, summary
from tasks.detect import cli_main


@pytest.fixture(scope="module")
def config(shapes, detector_run, tmp_path_factory):
    """The demo detection config on the shared test data at 128 px (batches of 4, no workers), its runs those of
    the shared detector."""
    folder = tmp_path_factory.mktemp("benchmark")
    section = yaml.safe_load((DEMO_CONFIGS / "ssdlite_mbv3_shapes.yaml").read_text())
    section["trainer"].update(default_root_dir=str(detector_run))
    section["data"].update(root=str(shapes / "coco"), image_size=128, batch_size=4, num_workers=0)
    path = folder / "ssdlite_mbv3_tiny.yaml"
    path.write_text(yaml.safe_dump(section))
    return path


def test_machine_states_what_decides_speed():
    machine = describe_machine(threads=2)
    assert machine["threads"] == 2 and machine["cores"] >= 1 and machine["cpu"]
    assert {"torch", "onnxruntime", "kestrel-vision"} <= set(machine["libraries"])
    line = machine_line(machine)
    assert machine["cpu"] in line and "2 thread(s) used" in line and machine["date"] in line
    assert has_int8_instructions(["AVX2", "AVX512-VNNI"]) and not has_int8_instructions(["AVX2", "AVX-512"])
    assert ("has no int8 dot-product" in line) != machine["int8_instructions"]


def test_models_take_turns_and_each_turn_starts_untimed():
    calls = []
    models = {name: (lambda x, name=name: calls.append((name, x))) for name in ("a", "b")}
    times = interleaved(models, {"a": {1: 1, 2: 2}, "b": {1: 1}}, repeats=4, rounds=2, warmup=3)
    assert {k: {b: len(t) for b, t in v.items()} for k, v in times.items()} == {"a": {1: 4, 2: 4}, "b": {1: 4}}
    # warm-up: 3 calls of each model on each batch; then a round: a's batch 1 (1 untimed + 2), a's batch 2
    # (1 + 2), b's batch 1 (1 + 2); twice
    assert calls[:9] == [("a", 1)] * 3 + [("a", 2)] * 3 + [("b", 1)] * 3
    assert [name for name, _ in calls[9:]] == (["a"] * 6 + ["b"] * 3) * 2
    stats = summary([1.0, 2.0, 3.0, 10.0])
    assert stats["median"] == 2.5 and stats["p25"] <= stats["median"] <= stats["p75"]


def test_a_trained_detector_in_every_form(config, tmp_path, capsys):
    run_dir = Path(yaml.safe_load(config.read_text())["trainer"]["default_root_dir"])
    checkpoint = next(run_dir.glob("lightning_logs/*/checkpoints/best.ckpt"))
    out = tmp_path / "bench"
    result = run([config], "best", ["eager", "torchvision", "onnx", "onnx_int8", "openvino"], references=True,
                 batches=[1, 2], repeats=2, threads=1, input_hw=(60, 80), calibration_images=4, out=out)
    rows = {(r["model"], r["runtime"]): r for r in result["rows"]}
    name = config.stem
    reference = "ssdlite320_mobilenet_v3_large"
    assert {r for m, r in rows if m == name} == {"eager", "torchvision", "onnx", "onnx_int8", "openvino"}
    assert {r for m, r in rows if m == reference} == {"eager", "onnx", "onnx_int8", "openvino"}
    for row in result["rows"]:
        assert set(row["ms"]) == {"1", "2"} and all(len(t) == 2 for t in row["samples"].values())
        assert row["ms"]["1"]["median"] > 0 and row["params"] > 0 and row["gflops"] > 0
    eager, onnx, int8 = rows[name, "eager"], rows[name, "onnx"], rows[name, "onnx_int8"]
    assert eager["checkpoint"] == str(checkpoint)
    # accuracy is the task's own test of each form: the checkpoint's numbers for eager, the same for ONNX
    cli_main(["test", "--config", str(config), "--ckpt_path", str(checkpoint), "--trainer.default_root_dir",
              str(tmp_path / "plain"), "--trainer.enable_progress_bar", "false"])
    expected = read_metrics(tmp_path / "plain")
    assert eager["accuracy"]["map"] == pytest.approx(expected["map"], abs=1e-3)
    assert onnx["accuracy"]["map"] == pytest.approx(eager["accuracy"]["map"], abs=2e-3)
    assert int8["accuracy"]["map"] is not None and int8["size_mb"] < 0.5 * onnx["size_mb"]
    # torchvision's pipeline on the same weights finds the same detections; ratios are over it
    same = rows[name, "torchvision"]["agreement_stats"]
    assert same["unmatched"] == 0 and same["detections"] == same["candidate_detections"] > 0
    assert rows[name, "torchvision"]["ratio"]["1"] == pytest.approx(1.0)
    assert eager["ratio"]["1"] == pytest.approx(eager["ms"]["1"]["median"] / rows[name, "torchvision"]["ms"]["1"][
        "median"])
    assert rows[reference, "eager"]["ratio"]["2"] == pytest.approx(1.0)
    # what is written
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"])) and saved["machine"]["threads"] == 1
    markdown = (out / "benchmark.md").read_text()
    assert machine_line(result["machine"]) in markdown and "![pareto](pareto.png)" in markdown
    assert markdown.count(f"| {name} |") == 5 and "| ssdlite320_mobilenet_v3_large | ONNX Runtime INT8 |" in markdown
    with Image.open(out / "pareto.png") as image:
        assert image.size[0] > 500
    printed = capsys.readouterr().out
    assert "Machine: " in printed and f"| {name} | ONNX Runtime |" in printed


def test_torchvisions_segmenters_as_references(tmp_path):
    images = torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8)
    subject = reference_subject("lraspp_mobilenet_v3_large", ["eager", "onnx"], (48, 64), tmp_path, [], threads=1)
    assert subject.reference and subject.task == "segment" and set(subject.forms) == {"eager", "onnx"}
    with torch.no_grad():
        eager = subject.forms["eager"].call(images)["labels"]
    assert eager.shape == (2, 48, 64)
    assert (subject.forms["onnx"].call(images)["labels"] == eager).float().mean() > 0.999


def untrained_pose_config(folder: Path) -> Path:
    """The demo pose config at 64x64, its data and runs folders empty: untrained weights on random images."""
    config = folder / "pose_tiny.yaml"
    section = yaml.safe_load((DEMO_CONFIGS / "pose_mbv2_shapes.yaml").read_text())
    section["data"].update(root=str(folder / "nothing_here"), image_size=[64, 64])
    section["trainer"]["default_root_dir"] = str(folder / "no_runs")
    config.write_text(yaml.safe_dump(section))
    return config


def test_untrained_without_data_runs_on_random_images(tmp_path, capsys):
    config = untrained_pose_config(tmp_path)
    result = run([config], "best", ["eager", "onnx"], batches=[1], repeats=1, threads=1, out=tmp_path / "bench")
    assert [(r["runtime"], r["accuracy"]) for r in result["rows"]] == [("eager", None), ("onnx", None)]
    assert result["rows"][1]["agreement"].startswith("keypoints within")
    assert any("no best.ckpt" in n for n in result["notes"]) and any("no data" in n for n in result["notes"])


# the phone files under the slow marker (30 s to lower two programs); ONNX and its network alone by default
@pytest.mark.parametrize("phone", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_phone_files_and_networks_alone_beside_the_others(phone, tmp_path):
    config = untrained_pose_config(tmp_path)
    files = ["onnx", "executorch"] if phone else ["onnx"]
    runtimes = ["eager", *files, *(f"network_{runtime}" for runtime in files)]
    result = run([config], None, runtimes, batches=[1, 2], repeats=1, threads=1, out=tmp_path / "bench")
    rows = {r["runtime"]: r for r in result["rows"]}
    assert set(rows) == set(runtimes)
    assert set(rows["onnx"]["ms"]) == set(rows["network_onnx"]["ms"]) == {"1", "2"}
    assert rows["network_onnx"]["file"].endswith("network.onnx") and rows["network_onnx"]["agreement"] is None
    if phone:
        assert set(rows["executorch"]["ms"]) == set(rows["network_executorch"]["ms"]) == {"1"}  # a phone: batch 1
        assert rows["executorch"]["file"].endswith("model.pte")
        assert rows["executorch"]["agreement_stats"]["max_keypoint_diff"] < 0.1  # eager on the same fitted pixels
    for runtime in files:
        cost = rows[runtime]["pipeline_cost"]["1"]
        assert cost == pytest.approx(rows[runtime]["ms"]["1"]["median"] /
                                     rows[f"network_{runtime}"]["ms"]["1"]["median"] - 1)
    markdown = (tmp_path / "bench" / "benchmark.md").read_text()
    cost = f"{100 * rows['onnx']['pipeline_cost']['1']:+.0f}%"
    assert "| ONNX Runtime, network only |" in markdown and f"| {cost} |" in markdown


def test_the_width_resolution_grid(tmp_path):
    result = grid({"mobilenet_v2": (0.35, 0.5)}, sizes=(64, 96), runtime="eager", batches=(1,), repeats=1,
                  threads=1, out=tmp_path)
    cells = [(r["width"], r["size"]) for r in result["rows"]]
    assert cells == [(0.35, 64), (0.35, 96), (0.5, 64), (0.5, 96)]
    by_cell = {(r["width"], r["size"]): r for r in result["rows"]}
    assert by_cell[0.5, 96]["gflops"] > by_cell[0.5, 64]["gflops"] > by_cell[0.35, 64]["gflops"]
    assert by_cell[0.5, 64]["params"] > by_cell[0.35, 64]["params"]
    assert "| mobilenet_v2 | 0.35 | 64 |" in (tmp_path / "grid.md").read_text() and (tmp_path / "grid.png").is_file()


def test_training_rates(config, tmp_path, capsys):
    rates = training(config, steps=2, warmup=1, root=tmp_path)
    assert len(rates) == 7 and all(rate > 0 for rate in rates.values())
    assert "| python -m tasks.detect fit (real loader, 0 worker(s)), channels_last True |" in capsys.readouterr().out


def test_command_line_errors(capsys):
    for wrong in (["--batch", "0"], ["--runtimes", "tensorrt"], ["a.yaml", "b.yaml", "--ckpt_path", "x.ckpt"]):
        with pytest.raises(SystemExit):
            main(wrong)
        assert "error:" in capsys.readouterr().err


def test_a_page_keeps_each_commands_block_and_the_text_around_it(tmp_path):
    page = tmp_path / "docs" / "bench.md"
    write_page(page, "python -m tasks.benchmark a.yaml", "# Kestrel benchmark\n\n| a |\n\n![pareto](pareto.png)\n",
               files="runs/benchmark", date="2026-12-07")
    text = page.read_text()
    assert text.startswith("# Kestrel benchmark\n") and "## Kestrel benchmark" in text
    assert "Written by `python -m tasks.benchmark a.yaml` on 2026-12-07." in text
    assert "The plot: `runs/benchmark/pareto.png`." in text and "![" not in text
    page.write_text(text.replace("# Kestrel benchmark\n", "# Kestrel benchmark\n\nBy hand.\n", 1) + "\nAfter.\n")
    write_page(page, "python -m tasks.benchmark training", "| rates |", title="Training speed")
    write_page(page, "python -m tasks.benchmark a.yaml", "# Kestrel benchmark\n\n| b |\n")
    text = page.read_text()
    assert "| a |" not in text and text.index("| b |") < text.index("After.") < text.index("## Training speed")
    assert "By hand." in text and text.count("<!-- written by: python -m tasks.benchmark a.yaml -->") == 1


def test_markdown_option_writes_the_tables_with_machine_and_command(tmp_path, capsys):
    config = untrained_pose_config(tmp_path)
    page = tmp_path / "page.md"
    argv = [str(config), "--runtimes", "eager", "--no-references", "--batch", "1", "--repeats", "1", "--threads", "1",
            "--out", str(tmp_path / "bench"), "--markdown", str(page)]
    assert main(argv) == 0
    text = page.read_text()
    assert f"Written by `python -m tasks.benchmark {' '.join(argv)}` on " in text
    assert "Machine: " in text and "1 thread(s) used" in text and "| pose_tiny | PyTorch eager |" in text
    assert (tmp_path / "bench" / "benchmark.md").read_text().split("Machine: ")[1] in text.replace(
        f"The plot: `{tmp_path / 'bench' / 'pareto.png'}`.", "![pareto](pareto.png)")


def test_quantization_writes_configs_the_cli_and_the_scoring_read(tmp_path, shapes):
    """Each backbone's config of ``benchmark quantization`` is one that ``fit`` and the scoring read (a config's
    file name says its task), and its QAT fine-tune takes a quarter of the epochs at a tenth of the rate."""
    from tasks.benchmark.quantization import backbone_config, qat_arguments, write_config
    from tasks.from_config import data_from_config

    base = yaml.safe_load((DEMO_CONFIGS / "ssdlite_mbv3_shapes.yaml").read_text())
    base["data"]["root"] = str(shapes / "coco")
    config = backbone_config(base, "mobilenet_v1", tmp_path / "mobilenet_v1", epochs=8)
    path = write_config(config, tmp_path / "mobilenet_v1", "ssdlite", "mobilenet_v1")
    assert type(data_from_config(path)).__name__ == "DetectionData"
    assert yaml.safe_load(path.read_text())["model"]["backbone"]["name"] == "mobilenet_v1"
    arguments = qat_arguments(config, tmp_path / "qat")
    assert arguments[arguments.index("--trainer.max_epochs") + 1] == "2"
    lr = base["model"]["optimizer"]["init_args"]["lr"]
    assert float(arguments[arguments.index("--model.optimizer.init_args.lr") + 1]) == pytest.approx(lr / 10)
    assert arguments[arguments.index("--model.quantization") + 1] == "qat"


def test_runtimes_refuses_files_it_cannot_compare_in_one_line(tmp_path, capsys):
    """An exported file where the checkpoint goes, and files of two tasks, are one line each (not a traceback)."""
    from tasks.benchmark.__main__ import main as benchmark
    from tasks.deploy.export import write_onnx_metadata

    files = []
    for task in ("detect", "segment"):
        path = tmp_path / task / "model.onnx"
        path.parent.mkdir()
        torch.onnx.export(torch.nn.Identity(), (torch.zeros(1, 3, 8, 8),), str(path), input_names=["images"],
                          dynamo=False)
        write_onnx_metadata(path, {"task": task, "input_size": [8, 8]})
        files.append(str(path))
    for args, says in (([files[0], files[0]], f"{files[0]} is an exported file"),
                       (["best.ckpt", *files], f"different tasks ({files[0]}: detect, {files[1]}: segment)")):
        with pytest.raises(SystemExit):
            benchmark(["runtimes", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert says in err[-1] and "Traceback" not in "\n".join(err), err
