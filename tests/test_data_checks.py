"""Data is checked before training starts: a bad image or mask fails ``fit`` in one line before the first
step; a bad file found later (checks switched off) still ends the run with ``last.ckpt`` saved."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runs import demo_args
from PIL import Image

from tasks import detect, pose, segment
from tasks.cli import main


@pytest.fixture
def data(shapes, tmp_path):
    """A copy of the shared data set, to damage."""
    return shutil.copytree(shapes, tmp_path / "data")


def last_val_image(root):
    annotations = json.loads((root / "coco" / "annotations" / "instances_val2017.json").read_text())
    image = max(annotations["images"], key=lambda im: im["id"])
    return root / "coco" / "val2017" / image["file_name"], image


def error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("damage, message", [
    ("empty", "is empty (0 bytes)"),
    ("not an image", "cannot be decoded"),
    ("other size", "is 20x10 pixels, its annotation says"),
])
def test_a_bad_image_fails_detection_fit_before_training(data, tmp_path, capsys, damage, message):
    path, _ = last_val_image(data)
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "not an image":
        path.write_bytes(b"this is not a JPEG")
    else:
        Image.new("RGB", (20, 10)).save(path, format="JPEG")
    run_dir = tmp_path / "run"
    assert main(detect.cli_main, ["fit", *demo_args("ssdlite_mbv3_shapes", data / "coco", run_dir, "64")]) == 1
    line = error_line(capsys)
    assert str(path) in line and message in line
    assert not list(run_dir.glob("**/*.ckpt")) and not list(Path.cwd().glob("*.ckpt"))  # not a step was trained


def test_pose_checks_its_images_too(data, tmp_path, capsys):
    path, _ = last_val_image(data)
    path.write_bytes(b"")
    assert main(pose.cli_main, ["fit", *demo_args("pose_mbv2_shapes", data / "coco", tmp_path, "64")]) == 1
    assert f"image {str(path)!r} is empty" in error_line(capsys)


def bad_last_val_mask(voc) -> str:
    stem = (voc / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[-1]
    mask = voc / "SegmentationClass" / f"{stem}.png"
    with Image.open(mask) as png:
        values = np.array(png)
        palette = png.getpalette()
    values[0, 0] = 9  # class 9 of a 4-class data set
    bad = Image.fromarray(values, mode="P")
    bad.putpalette(palette)
    bad.save(mask)
    return str(mask)


def test_a_bad_mask_fails_segmentation_fit_before_training(data, tmp_path, capsys):
    mask = bad_last_val_mask(data / "voc")
    run_dir = tmp_path / "run"
    assert main(segment.cli_main, ["fit", *demo_args("deeplabv3plus_mbv2_shapes", data / "voc", run_dir, "64")]) == 1
    line = error_line(capsys)
    assert f"mask {mask!r} has values [9]" in line
    assert not list(run_dir.glob("**/*.ckpt")) and not list(Path.cwd().glob("*.ckpt"))


def test_found_later_the_run_still_ends_with_a_checkpoint(data, tmp_path, capsys):
    """With the checks off, the bad last validation mask is met after the first training epoch: one line, and
    last.ckpt holds what was trained."""
    mask = bad_last_val_mask(data / "voc")
    run_dir = tmp_path / "run"
    args = demo_args("deeplabv3plus_mbv2_shapes", data / "voc", run_dir, "64", "--data.check_files", "false",
                     "--trainer.max_epochs", "2", "--trainer.num_sanity_val_steps", "0")
    assert main(segment.cli_main, ["fit", *args]) == 1
    assert f"mask {mask!r} has values [9]" in error_line(capsys)
    [last] = run_dir.glob("**/checkpoints/*.ckpt")
    assert last.name == "last.ckpt" and torch.load(last, weights_only=False)["global_step"] == 4  # 16 images, 4 steps


def test_a_mask_is_checked_against_its_image_as_displayed(tmp_path):
    """A photo stored landscape with an EXIF quarter turn is decoded (and displayed) portrait: its mask is drawn
    portrait, and the header check compares it with the portrait size rather than refusing it with swapped sizes."""
    from types import SimpleNamespace

    from tasks.data._module import check_split

    image = Image.fromarray(np.zeros((20, 40, 3), np.uint8))  # stored 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    image.save(tmp_path / "photo.jpg", exif=exif.tobytes())
    Image.fromarray(np.zeros((40, 20), np.uint8)).save(tmp_path / "portrait.png")  # 20 wide, 40 high
    Image.fromarray(np.zeros((20, 40), np.uint8)).save(tmp_path / "landscape.png")

    def split(mask):
        record = SimpleNamespace(file=tmp_path / "photo.jpg", mask_file=tmp_path / mask, width=None, height=None)
        return SimpleNamespace(records=[record], class_names=["thing"])

    check_split(split("portrait.png"), "test split")
    with pytest.raises(ValueError, match=r"landscape.png' is 40x20 pixels, its image .* 20x40"):
        check_split(split("landscape.png"), "test split")
