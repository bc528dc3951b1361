"""The demo detector, trained as ``make demo`` trains it, then exported: the files score what it scores.

Slow (about 12 minutes on two cores: the whole demo training); ``make test-all`` runs it.
"""

from pathlib import Path

import pytest
from cli_runs import latest_version, read_metrics

from tasks.data.synthetic import generate
from tasks.detect import cli_main

CONFIG = str(Path(__file__).parents[1] / "configs" / "demo" / "ssdlite_mbv3_shapes.yaml")


@pytest.mark.slow
def test_the_demo_detector_exported_scores_what_its_checkpoint_scores(tmp_path, capsys):
    root = generate(tmp_path / "shapes", progress=False) / "coco"
    run = ["--config", CONFIG, "--data.root", str(root), "--trainer.default_root_dir", str(tmp_path / "runs"),
           "--trainer.enable_progress_bar", "false"]
    cli_main(["fit", *run])
    cli_main(["test", *run, "--ckpt_path", "best"])
    checkpoint = read_metrics(tmp_path / "runs")
    assert checkpoint["map_50"] > 0.75  # a trained detector, not a degenerate comparison
    files = {}
    for name, extra in (("fp32", []), ("int8", ["--int8", "true"])):
        capsys.readouterr()
        cli_main(["export", *run, "--ckpt_path", "best", *extra])
        files[name] = Path(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = {}
    for name, path in files.items():
        cli_main(["test", *run, "--ckpt_path", str(path)])
        metrics[name] = read_metrics(tmp_path / "runs")
        report = (latest_version(tmp_path / "runs") / "report" / "report.md").read_text()
        assert f"| model file | {path} |" in report
    for key in ("map", "map_50"):
        assert metrics["fp32"][key] == pytest.approx(checkpoint[key], abs=0.002), key
        assert metrics["int8"][key] == pytest.approx(checkpoint[key], abs=0.01), key
    assert files["int8"].stat().st_size <= 0.4 * files["fp32"].stat().st_size
