"""Watching training and seeing results: TensorBoard and CSV logs in one folder, learning curves read from
them, and the drawing every picture Kestrel writes shares."""

import csv

import numpy as np
import pytest
import torch
from cli_runs import demo_args, latest_version
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tasks.cli import FitTimer
from tasks.detect import cli_main
from tasks.reporting import plots
from tasks.reporting.drawing import add_legend, colour, draw_boxes, draw_labels, draw_poses, save_image
from tasks.reporting.runs import duration


def default_logs(root, run_dir, *extra):
    """The demo detector at 128 px with the loggers a user gets (no ``trainer.logger`` given)."""
    args = demo_args("ssdlite_mbv3_shapes", root, run_dir, "128", "--trainer.log_every_n_steps", "1",
                     "--model.scheduler.init_args.warmup_steps", "2", *extra)
    at = args.index("--trainer.logger.class_path")
    return args[:at] + args[at + 4:]


@pytest.fixture(scope="module")
def data(shapes):
    return shapes


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    cli_main(["fit", *default_logs(data / "coco", run_dir, "--trainer.max_epochs", "2")])
    return run_dir


def events(folder):
    board = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    board.Reload()
    return board


def test_tensorboard_and_csv_log_into_one_folder(run):
    [version] = (run / "lightning_logs").iterdir()  # one folder, not one per logger
    assert version.name == "version_0" and list(version.glob("events.out.tfevents.*"))
    board = events(version)
    scalars = set(board.Tags()["scalars"])
    assert {"train/loss", "train/box", "train/cls", "val/map", "val/map_50"} <= scalars
    assert any(tag.startswith("lr-AdamW") for tag in scalars)  # the learning rate, every step
    assert len(board.Scalars("val/map")) == 2  # per epoch
    [samples] = [tag for tag in board.Tags()["images"] if tag.startswith("val/samples")]
    assert len(board.Images(samples)) == 2  # each epoch's predictions drawn on validation images
    rows = list(csv.DictReader(open(version / "metrics.csv")))
    assert sum(1 for r in rows if r.get("val/map")) == 2 and any(r.get("lr-AdamW/pg1") for r in rows)
    # how long the fit has taken, and how much of it validating, at each epoch's end
    fit, validating = ([float(r[key]) for r in rows if r.get(key)] for key in ("time/fit_s", "time/validation_s"))
    assert len(fit) == len(validating) == 2 and 0 < fit[0] < fit[1] and 0 < validating[0] < validating[1] < fit[1]
    assert validating[1] - validating[0] < fit[1] - fit[0]  # an epoch's validation is part of its time
    assert [s.value for s in board.Scalars("time/fit_s")] == pytest.approx(fit)


def test_the_report_draws_the_learning_curves_of_the_checkpoints_run(data, run, capsys):
    cli_main(["test", *default_logs(data / "coco", run, "--ckpt_path", "best")])
    report = latest_version(run) / "report"
    assert latest_version(run).name == "version_1" and (report / "learning_curves.png").is_file()
    assert "![learning_curves](learning_curves.png)" in (report / "report.md").read_text()
    rows = list(csv.DictReader(open(run / "lightning_logs" / "version_0" / "metrics.csv")))
    last = [r for r in rows if r.get("time/fit_s")][-1]
    assert f"| training (fit wall time) | {duration(float(last['time/fit_s']))} for 2 epochs " \
           f"(validation {duration(float(last['time/validation_s']))} of it) |" in (report / "report.md").read_text()


def test_learning_curves_follow_a_resumed_fit(data, run, monkeypatch, capsys):
    """A resumed fit logs into a new folder; the report's curves join it to the run it continued, and its clock
    counts on from the checkpoint's."""
    drawn = []
    monkeypatch.setattr(plots, "learning_curves", lambda logs, metric: drawn.append(logs))
    capsys.readouterr()
    cli_main(["fit", *default_logs(data / "coco", run, "--trainer.max_epochs", "3", "--ckpt_path", "last")])
    first = [float(r["time/fit_s"]) for r in csv.DictReader(open(run / "lightning_logs" / "version_0" / "metrics.csv"))
             if r.get("time/fit_s")]
    then = [float(r["time/fit_s"]) for r in csv.DictReader(open(latest_version(run) / "metrics.csv"))
            if r.get("time/fit_s")]
    assert then[-1] > first[-1]  # epoch 3's end, counted from the start of epoch 1
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Fit: ")]
    assert line.startswith("Fit: 3 epochs, 12 steps in ") and line.endswith(" of it)")  # 16 images, batch 4
    cli_main(["test", *default_logs(data / "coco", run, "--ckpt_path", "last")])
    resumed = latest_version(run).parent / "version_2"
    assert drawn == [[run / "lightning_logs" / "version_0" / "metrics.csv", resumed / "metrics.csv"]]
    assert sum(1 for r in csv.DictReader(open(resumed / "metrics.csv")) if r.get("val/map")) == 1  # epoch 3


def test_max_time_still_stops_the_fit(data, tmp_path):
    """Kestrel's fit clock is Lightning's Timer, so ``trainer.max_time`` keeps stopping training."""
    cli = cli_main(["fit", *default_logs(data / "coco", tmp_path, "--trainer.max_time", "00:00:00:00")])
    [timer] = [c for c in cli.trainer.callbacks if isinstance(c, FitTimer)]
    assert timer.time_remaining() <= 0 and cli.trainer.global_step == 0


def test_durations_read_as_minutes_and_seconds():
    assert [duration(s) for s in (0.4, 35.2, 552, 3600 + 125)] == ["0 s", "35 s", "9 min 12 s", "1 h 2 min"]


def test_learning_curves_need_a_training_log(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("epoch,step,val/map\n0,9,0.5\n")
    assert plots.learning_curves(log, "map") is None  # validation alone: nothing trained
    rows = ["epoch,step,train/loss,lr-SGD,val/map"] + [f"{s // 5},{s},{2 - s / 10},{0.1 - s / 200}," for s in range(10)]
    log.write_text("\n".join(rows + ["0,4,,,0.3", "1,9,,,0.4"]) + "\n")
    figure = plots.learning_curves(log, "map")
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["Training losses", "Learning rate (SGD)", "Validation, 2 epochs"]
    [_, epoch_means] = figure.axes[0].lines
    assert list(epoch_means.get_ydata()) == pytest.approx([1.8, 1.3])  # the mean of each epoch's steps


def test_boxes_are_drawn_in_their_class_colour():
    image = torch.full((3, 60, 80), 128, dtype=torch.uint8)
    drawn = draw_boxes(image, [[10, 20, 50, 55]], [2], ["circle", "square"], scores=[0.9], width=1)
    assert tuple(drawn[:, 55, 30].tolist()) == colour(2)  # bottom edge
    assert tuple(drawn[:, 40, 10].tolist()) == colour(2)  # left edge
    assert tuple(drawn[:, 40, 30].tolist()) == (128, 128, 128)  # inside: not filled
    assert torch.equal(draw_boxes(image, np.zeros((0, 4)), [], ["circle"]), image)


def test_labels_are_overlaid_with_a_legend_of_the_classes_shown():
    image = torch.zeros((3, 40, 300), dtype=torch.uint8)
    labels = torch.zeros((40, 300), dtype=torch.uint8)
    labels[:, 100:200] = 3
    labels[:, 200:] = 255  # void: not coloured
    drawn = draw_labels(image, labels, ["background", "a", "b", "c"])
    assert drawn.shape[1] > 40 and drawn.shape[2] == 300  # the legend strip below the image
    assert drawn[:, :40, 150].sum() > 0 and drawn[:, :40, :100].sum() == 0 and drawn[:, :40, 250].sum() == 0
    legend = drawn[:, 40:].permute(1, 2, 0).reshape(-1, 3)
    shown = {tuple(c) for c in legend.tolist()}
    assert colour(3) in shown and colour(1) not in shown  # only the classes in the image
    assert add_legend(image, []).shape[1] > 40  # "none"


def test_poses_draw_visible_points_only():
    image = torch.zeros((3, 50, 50), dtype=torch.uint8)
    points = np.array([[[10.0, 10.0], [40.0, 40.0]]])
    drawn = draw_poses(image, points, np.array([[True, False]]), [(0, 1)], colours=(255, 0, 0))
    assert tuple(drawn[:, 10, 10].tolist()) == (255, 0, 0)
    assert drawn[:, 40, 40].sum() == 0 and drawn[:, 25, 25].sum() == 0  # the hidden point, and its limb


def test_saved_images_keep_their_size(tmp_path):
    image = torch.randint(0, 255, (3, 30, 40), dtype=torch.uint8)
    for name in ("a.jpg", "b.png"):
        with Image.open(save_image(image, tmp_path / "sub" / name)) as saved:
            assert saved.size == (40, 30)
    with Image.open(tmp_path / "sub" / "b.png") as saved:
        assert np.array_equal(np.asarray(saved), image.permute(1, 2, 0).numpy())
