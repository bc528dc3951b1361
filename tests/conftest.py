"""Test set-up: no network, no update checks, deterministic and quiet."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest -n N: one thread per worker (and per process it starts), so that workers x threads stay within the
    # cores; OpenMP threads spin-waiting for a core make oversubscribed runs many times slower
    os.environ["OMP_NUM_THREADS"] = "1"

import socket  # noqa: E402
from urllib.error import URLError  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

_connect = socket.socket.connect


def _loopback_only(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1", "") and self.family != socket.AF_UNIX:
        raise OSError(f"tests must not touch the network (tried to connect to {address!r})")
    return _connect(self, address)


socket.socket.connect = _loopback_only


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache in which any download attempt fails the test."""
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))

    def no_download(url, *args, **kwargs):
        raise URLError(f"no network in tests ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)


@pytest.fixture(scope="session")
def shapes(tmp_path_factory):
    """The synthetic data set (COCO instances and keypoints, VOC folders; 16 training and 8 validation images),
    made once per test run. Tests read it; one that changes files works on a copy (``shutil.copytree``)."""
    from tasks.data.synthetic import generate

    return generate(tmp_path_factory.mktemp("shapes"), train=16, val=8, seed=2, progress=False)


@pytest.fixture(scope="session")
def detector_run(shapes, tmp_path_factory):
    """The run folder of one ``python -m tasks.detect fit`` of the demo config at 128 px on ``shapes``: the
    checkpoints (``version_0/checkpoints/best.ckpt``, ``last.ckpt``) every detection test shares.

    It trains 40 epochs on the validation images (80 steps, validating every 10th epoch) to learn them (mAP@0.5
    about 0.7): a detector whose scores are still flat would make "the exported file scores what the checkpoint
    scores" a comparison of near-ties, which runtimes may break either way."""
    from cli_runs import demo_args

    from tasks.detect import cli_main

    run_dir = tmp_path_factory.mktemp("detector_run")
    cli_main(["fit", *demo_args("ssdlite_mbv3_shapes", shapes / "coco", run_dir, "128", "--trainer.max_epochs", "40",
                                "--data.train_split", "val2017", "--trainer.check_val_every_n_epoch", "10",
                                "--trainer.log_every_n_steps", "1",
                                "--data.augment", "none", "--model.scheduler.init_args.warmup_steps", "3")])
    return run_dir
