"""What produced a number or a file: the backbone inside a network, a file's SHA-256, Kestrel's version and commit."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from torch import nn

from backbones import __version__


def backbone_name(network: nn.Module) -> str:
    """The registered name of a network's backbone (found inside necks and wrappers), else its class."""
    backbone = getattr(network, "backbone", None)
    while not hasattr(backbone, "name") and hasattr(backbone, "body"):
        backbone = backbone.body
    return getattr(backbone, "name", type(backbone).__name__)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def kestrel_version() -> str:
    """The installed version and, in a git checkout, the commit (``+dirty`` with uncommitted changes)."""
    installed = __version__
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"{installed} (not a git checkout)"
    return f"{installed}, commit {commit}{'+dirty' if dirty else ''}"
