"""Report writing and ``python -m tasks.reporting compare``."""

import json

import pytest

from tasks.reporting import plots
from tasks.reporting.__main__ import main
from tasks.reporting.compare import compare, find_metrics
from tasks.reporting.report import write_report

RUN = {"task": "test", "backbone": "x", "parameters (M)": "1.00", "GFLOPs (one forward)": "0.10",
       "checkpoint sha256": "-", "Kestrel": "0.1.0", "evaluation wall time (s)": "0.1"}


def _run(folder, miou, cat, dog):
    metrics = {"miou": miou, "pixel_accuracy": 0.9, "per_class_iou": {"background": 0.95, "cat": cat, "dog": dog}}
    per_class = {name: {"iou": v} for name, v in metrics["per_class_iou"].items()}
    figures = {"per_class_iou": plots.bars(metrics["per_class_iou"], "IoU", "IoU")}
    return write_report(folder / "lightning_logs" / "version_0", "Segmentation report", metrics,
                        ["miou", "pixel_accuracy"], per_class, ["iou"], RUN, ["a note"], figures)


def test_report_files_and_worst_first_table(tmp_path):
    folder = _run(tmp_path, 0.5, 0.2, None)
    markdown = (folder / "report.md").read_text()
    assert markdown.index("| dog | n/a |") < markdown.index("| cat | 0.2000 |") < markdown.index("| background |")
    assert "![per_class_iou](per_class_iou.png)" in markdown
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<td>cat</td><td>0.2000</td>" in page
    assert json.loads((folder / "metrics.json").read_text())["per_class_iou"]["dog"] is None


def test_compare_shows_numbers_and_differences(tmp_path, capsys):
    _run(tmp_path / "a", 0.5, 0.2, 0.3)
    _run(tmp_path / "b", 0.625, 0.4, None)
    table = compare([tmp_path / "a", tmp_path / "b" / "lightning_logs" / "version_0"])
    assert "| miou | 0.5000 | 0.6250 | +0.1250 |" in table
    assert "| cat iou | 0.2000 | 0.4000 | +0.2000 |" in table
    assert "| dog iou | 0.3000 | n/a | n/a |" in table
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert capsys.readouterr().out == compare([tmp_path / "a", tmp_path / "b"])
    assert main(["compare", str(tmp_path / "nothing")]) == 2
    with pytest.raises(FileNotFoundError, match="run `test` first"):
        find_metrics(tmp_path / "nothing")
