"""Ground truth is checked before it is scored: repeated or missing annotation ids give the same mAP (numbered
afresh, said), categories sharing a name and a checkpoint of other classes are one line each."""

import json
import shutil

import pytest
from cli_runs import demo_args, read_metrics

from tasks import detect
from tasks.cli import main

ANNOTATIONS = "annotations/instances_val2017.json"


@pytest.fixture(scope="module")
def scored(shapes, detector_run, tmp_path_factory):
    """The test detector's numbers on the unchanged validation split."""
    run = tmp_path_factory.mktemp("scored")
    assert main(detect.cli_main, ["test", *arguments(shapes / "coco", detector_run, run)]) == 0
    return read_metrics(run)


def arguments(root, detector_run, run_dir):
    best = detector_run / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    return [*demo_args("ssdlite_mbv3_shapes", root, run_dir, "128"), "--ckpt_path", str(best)]


def changed(shapes, tmp_path, change):
    """A copy of the COCO data whose validation annotation file ``change`` edited."""
    root = tmp_path / "coco"
    shutil.copytree(shapes / "coco", root)
    data = json.loads((root / ANNOTATIONS).read_text())
    change(data)
    (root / ANNOTATIONS).write_text(json.dumps(data))
    return root


def repeat_ids(data):
    for ann in data["annotations"]:
        ann["id"] = 7


def drop_ids(data):
    for ann in data["annotations"][::2]:
        del ann["id"]


@pytest.mark.parametrize("change", [repeat_ids, drop_ids])
def test_repeated_or_missing_annotation_ids_give_the_same_map_and_say_so(shapes, detector_run, scored, tmp_path,
                                                                          change, caplog):
    root = changed(shapes, tmp_path, change)
    assert main(detect.cli_main, ["test", *arguments(root, detector_run, tmp_path / "run")]) == 0
    got = read_metrics(tmp_path / "run")
    assert {k: got[k] for k in ("map", "map_50", "mar_100")} == {k: scored[k] for k in ("map", "map_50", "mar_100")}
    assert got["map"] > 0.05
    assert any("annotation(s) without an id" in r.getMessage() and "numbered 1.." in r.getMessage()
               for r in caplog.records)


def test_categories_sharing_a_name_are_one_line(shapes, detector_run, tmp_path, capsys):
    def rename(data):
        data["categories"][1]["name"] = data["categories"][0]["name"]

    root = changed(shapes, tmp_path, rename)
    assert main(detect.cli_main, ["test", *arguments(root, detector_run, tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "share the name" in err[0] and ANNOTATIONS.split("/")[1] in err[0], err


def test_a_checkpoint_is_not_scored_on_data_of_other_classes(shapes, detector_run, tmp_path, capsys):
    def swap(data):
        first, second = data["categories"][0], data["categories"][1]
        first["name"], second["name"] = second["name"], first["name"]

    root = changed(shapes, tmp_path, swap)
    assert main(detect.cli_main, ["test", *arguments(root, detector_run, tmp_path / "run")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the checkpoint was trained for class names" in err[0], err
    assert "(they differ from label 1)" in err[0]
