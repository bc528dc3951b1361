"""A run that goes wrong says so and loses nothing: divergence and SIGTERM end ``fit`` with one line and a non-zero
exit, no checkpoint with non-finite weights is written or read, and a checkpoint is replaced atomically or not at
all (a full disk keeps the previous one)."""

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from cli_runs import demo_args

from backbones._weights import non_finite
from tasks import detect
from tasks.callbacks import AtomicCheckpointIO, RunStopped
from tasks.cli import main


def fit_args(shapes, run_dir, *extra):
    """The demo detector at 128 px on the 8 validation images, two steps an epoch."""
    return ["fit", *demo_args("ssdlite_mbv3_shapes", shapes / "coco", run_dir, "128", "--data.train_split", "val2017",
                              "--trainer.max_epochs", "2", *extra)]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and err[0].endswith("(--verbose shows the traceback)"), err
    return err[0]


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("**/*.ckpt"))


def test_a_nan_loss_ends_fit_with_one_line_and_no_non_finite_checkpoint(shapes, tmp_path, capsys):
    """At a learning rate of 1e30 the first update makes the weights infinite and the next loss NaN."""
    assert main(detect.cli_main, fit_args(shapes, tmp_path, "--model.optimizer.init_args.lr", "1e30")) == 1
    line = error_line(capsys)
    assert "training diverged at step 1: the loss is nan (step 0: loss " in line
    assert "no checkpoint is written" in line and "--model.optimizer.init_args.lr" in line
    assert checkpoints(tmp_path) == []


def test_an_exploding_loss_ends_fit_and_last_keeps_the_finite_weights_before_it(shapes, tmp_path, capsys):
    """At a learning rate of 100 the loss is finite but grows a thousandfold within a few steps."""
    args = fit_args(shapes, tmp_path, "--model.optimizer.init_args.lr", "100", "--trainer.max_epochs", "20",
                    "--trainer.check_val_every_n_epoch", "20")
    assert main(detect.cli_main, args) == 1
    line = error_line(capsys)
    assert "training diverged at step" in line and "times the first step's" in line
    assert "last.ckpt holds the weights from before it" in line
    (last,) = [p for p in checkpoints(tmp_path) if p.name == "last.ckpt"]
    state = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert non_finite(state) == []


def test_test_export_and_init_from_refuse_non_finite_weights_in_one_line(shapes, detector_run, tmp_path, capsys):
    best = detector_run / "lightning_logs" / "version_0" / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    name = next(k for k, v in checkpoint["state_dict"].items() if v.is_floating_point())
    checkpoint["state_dict"][name][0] = float("nan")
    broken = tmp_path / "diverged.ckpt"
    torch.save(checkpoint, broken)
    base = demo_args("ssdlite_mbv3_shapes", shapes / "coco", tmp_path / "run", "128")
    for args in (["test", *base, "--ckpt_path", str(broken)], ["export", *base, "--ckpt_path", str(broken)],
                 ["test", *base, "--model.init_from", str(broken)]):
        assert main(detect.cli_main, args) == 1, args
        line = error_line(capsys)
        assert str(broken) in line and "are not finite (1 of" in line and name.removeprefix("model.") in line, line
    assert not (tmp_path / "run").exists() or checkpoints(tmp_path / "run") == []


def test_sigterm_ends_fit_with_status_143_saying_how_to_resume(shapes, tmp_path, capsys):
    args = fit_args(shapes, tmp_path, "--trainer.max_epochs", "10", "--trainer.callbacks+=cli_runs.SigtermAt",
                    "--trainer.callbacks.step", "3")
    assert main(detect.cli_main, args) == 143
    line = error_line(capsys)
    assert "fit stopped by SIGTERM at step 3 of 20" in line and "--ckpt_path last" in line
    (last,) = [p for p in checkpoints(tmp_path) if p.name == "last.ckpt"]
    assert f"{last} holds its weights" in line
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 3


def test_a_failed_write_keeps_the_previous_checkpoint_and_leaves_no_partial_file(tmp_path, monkeypatch):
    writer, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    writer.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def disk_full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(RunStopped, match=f"no space left in {tmp_path} to write last.ckpt: it needs 0.0 MB"):
        writer.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}}, path)
    assert sorted(tmp_path.iterdir()) == [path]
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 MB tmpfs: room for one of the test detector's checkpoints (46 MB with the optimizer's state), not
    for a second beside it. Mounting needs root (CI and this machine run as root)."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if shutil.which("mount") is None or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                                                        str(folder)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_full_disk_ends_fit_with_one_line_and_keeps_the_checkpoint_written(shapes, small_tmpfs, capsys):
    assert main(detect.cli_main, fit_args(shapes, small_tmpfs, "--trainer.check_val_every_n_epoch", "1")) == 1
    line = error_line(capsys)
    folder = next(small_tmpfs.glob("lightning_logs/version_0/checkpoints"))
    assert f"no space left in {folder} to write " in line and "MB are free" in line
    written = checkpoints(small_tmpfs)
    assert len(written) == 1 and not [p for p in folder.iterdir() if p.suffix != ".ckpt"]
    state = torch.load(written[0], map_location="cpu", weights_only=True)["state_dict"]  # whole: it loads
    assert non_finite(state) == []


def test_resume_refuses_another_model_or_optimizer_and_says_what_it_changes(shapes, tmp_path, capsys):
    assert main(detect.cli_main, fit_args(shapes, tmp_path, "--trainer.max_epochs", "1")) == 0
    last = str(next(p for p in checkpoints(tmp_path) if p.name == "last.ckpt"))
    for extra, says in ((["--model.backbone.name", "mobilenet_v2"],
                         "has model.backbone.name 'mobilenet_v3_large', the command line asks for 'mobilenet_v2'; a "
                         "resumed run keeps its model"),
                        (["--data.image_size", "96"], "has model.image_size 128, the command line asks for 96"),
                        (["--model.optimizer.init_args.lr", "0.1"],
                         "keeps its optimizer and learning-rate schedule")):
        capsys.readouterr()
        assert main(detect.cli_main, fit_args(shapes, tmp_path, "--ckpt_path", "last", *extra)) == 1, extra
        line = error_line(capsys)
        assert line.startswith(f"error: fit --ckpt_path {last}: the checkpoint's run ") and says in line, line
        assert f"start a new run with --model.init_from {last}" in line
    # the same value is no change; another evaluation setting is used, and said
    args = fit_args(shapes, tmp_path, "--ckpt_path", "last", "--model.backbone.name", "mobilenet_v3_large",
                    "--model.channels_last", "false")
    assert main(detect.cli_main, args) == 0
    assert "Resuming with model.channels_last False (the checkpoint's run had True)" in capsys.readouterr().out


def test_float16_mixed_precision_keeps_its_overflowing_steps_to_its_scaler():
    """Under a gradient scaler an infinite gradient is a step the scaler skips, not a diverged run."""
    from types import SimpleNamespace

    from tasks.callbacks import DivergenceGuard

    module = torch.nn.Linear(2, 2)
    module.weight.grad = torch.full((2, 2), float("inf"))
    scaled = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=object()), global_step=4)
    DivergenceGuard().on_before_optimizer_step(scaled, module, None)
    plain = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=None), global_step=4, checkpoint_callbacks=[])
    with pytest.raises(RunStopped, match="training diverged at step 4: the gradient of weight is not finite"):
        DivergenceGuard().on_before_optimizer_step(plain, module, None)
