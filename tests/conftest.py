"""Test set-up: no network, no update checks, deterministic and quiet."""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

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
