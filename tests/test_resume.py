"""Crash safety: a training process killed with SIGKILL mid-epoch resumes with ``fit --ckpt_path last``,
the schedule where it was, and ``best.ckpt`` holds the weights its score was measured on."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runs import demo_args

from tasks.detect import cli_main

ROOT = Path(__file__).parents[1]
# 16 training images in batches of 2; a step checkpoint every 3 steps: the run is killed at the first one past
# the first epoch (step 9), and step checkpoints land mid-epoch until step 16, however late the kill comes
STEPS_PER_EPOCH, EPOCHS, EVERY = 8, 3, 3


@pytest.fixture(scope="module")
def data(shapes):
    return shapes


def fit_command(data, run_dir, *extra):
    args = demo_args("ssdlite_mbv3_shapes", data / "coco", run_dir, "96", "--trainer.max_epochs", str(EPOCHS),
                     "--checkpoint.every_n_train_steps", str(EVERY), "--data.augment", "none", "--data.batch_size", "2",
                     "--model.scheduler.init_args.warmup_steps", "3", *extra)
    return [sys.executable, "-m", "tasks.detect", "fit", *args]


def environment():
    # one thread each: the test's processes never contend for the two cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def kill_after_step(command, checkpoint: Path, step: int, timeout: float = 240) -> None:
    """Start ``command`` and SIGKILL it as soon as ``checkpoint`` holds global step ``step`` or later."""
    process = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline, seen = time.monotonic() + timeout, None
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.is_file() and checkpoint.stat().st_mtime != seen:
                seen = checkpoint.stat().st_mtime
                try:
                    if load(checkpoint)["global_step"] >= step:
                        process.send_signal(signal.SIGKILL)
                        process.wait()
                        return
                except (EOFError, RuntimeError):  # caught while being renamed into place
                    pass
            time.sleep(0.05)
        raise AssertionError(f"the run ended (exit {process.poll()}) before a checkpoint at step {step}")
    finally:
        if process.poll() is None:
            process.kill()


def test_a_killed_run_resumes_from_its_last_step_checkpoint(data, tmp_path, capsys):
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "lightning_logs" / "version_0" / "checkpoints"
    kill_after_step(fit_command(data, run_dir), checkpoints / "last.ckpt", step=STEPS_PER_EPOCH + 1)
    crashed = load(checkpoints / "last.ckpt")
    assert crashed["global_step"] % STEPS_PER_EPOCH != 0  # a step checkpoint, in the middle of an epoch

    cli_main(["fit", *fit_command(data, run_dir, "--ckpt_path", "last")[4:]])  # this process: the command's own args
    assert f"Resuming from checkpoint {checkpoints / 'last.ckpt'}" in capsys.readouterr().out
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]  # beside the ones it continues
    assert not (run_dir / "lightning_logs" / "version_1" / "checkpoints").exists()

    final = load(checkpoints / "last.ckpt")
    assert final["global_step"] == STEPS_PER_EPOCH * EPOCHS
    scheduler = final["lr_schedulers"][0]
    assert scheduler["last_epoch"] == STEPS_PER_EPOCH * EPOCHS  # the schedule went on from where it stopped

    # best.ckpt: saved at a validation (never at a step checkpoint, with the last validation's score), at
    # the first validation that reached the best score logged by either process
    best = load(checkpoints / "best.ckpt")
    score = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'val/map'"))[
        "best_model_score"]
    logged = [(float(r["val/map"]), int(r["step"])) for version in ("version_0", "version_1")
              for r in csv.DictReader(open(run_dir / "lightning_logs" / version / "metrics.csv")) if r.get("val/map")]
    assert len(logged) == EPOCHS
    top = max(value for value, _ in logged)
    assert float(score) == pytest.approx(top, abs=1e-6)
    assert best["global_step"] == 1 + min(step for value, step in logged if value == pytest.approx(top, abs=1e-6))


def test_fit_ckpt_path_last_without_a_run_is_an_error(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="--ckpt_path last: no last.ckpt under"):
        cli_main(["fit", *demo_args("ssdlite_mbv3_shapes", data / "coco", tmp_path, "96"), "--ckpt_path", "last"])
