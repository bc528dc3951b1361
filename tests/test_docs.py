"""Every shell and Python example of the README and the docs runs, so the docs cannot drift from the code.

Each page runs in a folder of its own that looks like a checkout after ``make install``: ``configs/``, the
Makefile and the installed environment, the tiny synthetic data set at every path the docs use (``data/shapes``,
``data/coco``, ``data/VOCdevkit/VOC2007`` and ``VOC2012``, ``my_photos/``, a Roboflow export in
``downloads/roboflow/``), and a home whose torch hub cache holds
the weight files the docs name, written by the test (random weights in the published files' layout). Its
``bash`` blocks run in order, one command at a time; its ``python`` blocks run in one namespace, in order with
the commands. ``python -m`` commands run in this process (``runpy``), each with the options below appended so that
a fit is two steps on the CPU and a benchmark one timed call; ``make TARGET`` runs the commands ``make -n TARGET``
prints, the same way; a ``python -m`` command the page has run already (the README shows what ``make demo`` runs) is
not run twice. The quick options set the trainer to one CPU device, so a config's GPU settings are not what these
tests check. Commands in ``NOT_RUN`` are left out, each for the reason given. ``text``, ``yaml`` and
``toml`` blocks are shown, not run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torchvision
from markdown_it import MarkdownIt

pytestmark = pytest.mark.docs  # `make docs` runs them with the site's build; `make test` leaves them out

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

# What the tests leave out, by the command's first words, and why.
NOT_RUN = {
    "make test": "the test suite itself",
    "make test-all": "the test suite itself",
    "make lint": "CI's own check, not an example",
    "make docs": "runs these examples itself",
    "make docs-serve": "a server that runs until stopped",
    "mkdocs serve": "a server that runs until stopped",
    "tensorboard": "a server that runs until stopped",
    ".venv/bin/tensorboard": "a server that runs until stopped",
    "pip install": "the tests run in the installed environment",
}

_TRAINER = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "1",
            "--trainer.strategy", "auto", "--trainer.enable_progress_bar", "false", "--data.num_workers", "0"]
# Options appended to each command, by module and subcommand, so that it runs in seconds on the tiny data.
QUICK = {
    ("task", "fit"): [*_TRAINER, "--trainer.max_epochs", "1", "--trainer.max_steps", "-1",
                      "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "2",
                      "--trainer.check_val_every_n_epoch", "1", "--trainer.val_check_interval", "null",
                      "--data.batch_size", "2"],
    ("task", "validate"): _TRAINER,
    ("task", "test"): _TRAINER,
    ("task", "predict"): _TRAINER,
    ("task", "export"): ["--calibration_images", "4"],
    ("tasks.benchmark", None): ["--repeats", "1", "--batch", "1", "--threads", "1", "--calibration-images", "4"],
    ("tasks.benchmark", "runtimes"): ["--repeats", "1", "--batch", "1", "--threads", "1"],
    ("tasks.benchmark", "training"): ["--steps", "2", "--warmup", "1"],
    ("tasks.benchmark", "quantization"): ["--epochs", "1"],
    ("tasks.benchmark", "pick"): ["--repeats", "1", "--threads", "1"],
    ("backbones", "pick"): ["--repeats", "1", "--threads", "1"],
    ("tasks.data.synthetic", None): ["--train", "8", "--val", "4"],
}
TASK_MODULES = ("tasks.detect", "tasks.segment", "tasks.pose")
# Pages whose examples take minutes even so (every demo model benchmarked in every runtime; four phone files
# converted, about 90 s each): `make test-all`. The phone export is in the default suite (tests/test_detect_cli.py).
SLOW_PAGES = {"docs/guides/benchmarking.md", "docs/guides/phone.md"}


def _blocks(page: Path) -> list[tuple[int, str, str]]:
    """``(line, language, code)`` of every fenced block of ``page``, in order."""
    tokens = MarkdownIt("commonmark").parse(page.read_text())
    return [(t.map[0] + 1, t.info.split()[0] if t.info else "", t.content) for t in tokens if t.type == "fence"]


def _commands(code: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(line.split(" #")[0].strip() if " #" in line else line.strip())
    return commands


def _not_run(command: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command == start or command.startswith(start + " ")), None)


def _quick(module: str, args: list[str]) -> list[str]:
    if module in TASK_MODULES:
        return QUICK.get(("task", args[0] if args else None), [])
    sub = args[0] if args and not args[0].startswith("-") and (module, args[0]) in QUICK else None
    return QUICK.get((module, sub), [])


def _expand(words: str, cwd: Path, env: dict[str, str]) -> list[str]:
    """The shell's expansion of ``words`` (``~``, ``$(...)``, globs, braces) in ``cwd``."""
    out = subprocess.run(["bash", "-c", f"printf '%s\\0' {words}"], cwd=cwd, env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.split("\0")[:-1]


_PYTHON_M = re.compile(r"^(?:\S*/)?python3? -m ([\w.]+)(?: (.*))?$")


def _run_module(module: str, args: list[str], where: str) -> None:
    argv = sys.argv
    sys.argv = [module, *args]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code not in (0, None):
            pytest.fail(f"{where}: `python -m {module} {shlex.join(args)}` exited with {stop.code}")
    finally:
        sys.argv = argv


def _run(command: str, cwd: Path, env: dict[str, str], where: str, ran: set[str]) -> None:
    """Run one command of a page; ``ran`` holds the page's ``python -m`` commands so far, and one that a page (or a
    ``make`` target it ran) has run already is not run again (the README shows what ``make demo`` runs)."""
    command, _, output = command.partition(" > ")  # `python -m ... > file`: its output written to file
    match = _PYTHON_M.match(command)
    if match and not re.search(r"[;&|<>]", re.sub(r"\$\([^()]*\)", "", command)):  # pipes inside $(...) are fine
        module, rest = match.group(1), match.group(2) or ""
        key = f"{module} {' '.join(rest.split())} > {output.strip()}"
        if key in ran:
            return
        ran.add(key)
        args = _expand(rest, cwd, env) if rest else []
        if output:
            with open(cwd / output.strip(), "w") as file, contextlib.redirect_stdout(file):
                _run_module(module, args, where)  # as written: what it prints is the point
        else:
            _run_module(module, args + _quick(module, args), where)
        return
    command += f" > {output}" if output else ""
    make = re.fullmatch(r"make ([\w-]+)", command)
    if make:
        # the sandbox's .venv is the real one: its install stamp counts as up to date (-o), so that a stale one in a
        # working checkout never has the install recipe (rm -rf .venv/litert, pip install) run on it
        printed = subprocess.run(["make", "-n", "--no-print-directory", "-o", ".venv/.kestrel-installed",
                                  make.group(1)], cwd=cwd, env=env, capture_output=True, text=True)
        assert printed.returncode == 0, f"{where}: `{command}`: {printed.stderr}"
        for line in _commands(printed.stdout):
            if re.match(r"make(\[\d+\])?:", line):  # "Nothing to be done for ..."
                continue
            _run(line, cwd, env, f"{where} ({command})", ran)
        return
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True)
    assert done.returncode == 0, f"{where}: `{command}` exited with {done.returncode}:\n{done.stdout}{done.stderr}"


@pytest.fixture(scope="session")
def weight_cache(tmp_path_factory) -> Path:
    """A ``.cache`` folder whose torch hub cache holds the files the docs load, in their published layout, with
    random weights; written once per test run."""
    cache = tmp_path_factory.mktemp("home") / ".cache"
    checkpoints = cache / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    detector = torchvision.models.detection.ssdlite320_mobilenet_v3_large(weights_backbone=None, num_classes=91)
    torch.save(detector.state_dict(), checkpoints / "ssdlite320_mobilenet_v3_large_coco-a79551df.pth")
    models = torchvision.models
    for weights, build in [(models.MobileNet_V3_Large_Weights.DEFAULT, models.mobilenet_v3_large),
                           (models.MobileNet_V2_Weights.DEFAULT, models.mobilenet_v2)]:
        torch.save(build().state_dict(), checkpoints / os.path.basename(weights.url))
    return cache


def _voc(shapes: Path, root: Path) -> None:
    """``shapes/voc`` as a VOC year folder, with the SBD names (``trainaug``, ``SegmentationClassAug``) too."""
    root.mkdir(parents=True)
    for name in ("JPEGImages", "Annotations", "SegmentationClass"):
        (root / name).symlink_to(shapes / "voc" / name)
    (root / "SegmentationClassAug").symlink_to(shapes / "voc" / "SegmentationClass")
    shutil.copytree(shapes / "voc" / "ImageSets", root / "ImageSets")
    for sets in ("Main", "Segmentation"):
        for split in ("trainaug", "trainval", "test"):
            source = "train" if split == "trainaug" else "val"
            shutil.copy(root / "ImageSets" / sets / f"{source}.txt", root / "ImageSets" / sets / f"{split}.txt")


def _roboflow(shapes: Path, export: Path) -> None:
    """The COCO data as Roboflow exports it: a folder per split with ``_annotations.coco.json`` beside its images,
    and a category for the whole project (id 0) that no annotation uses."""
    for split, source in (("train", "train2017"), ("valid", "val2017")):
        folder = export / split
        folder.mkdir(parents=True)
        data = json.loads((shapes / "coco" / "annotations" / f"instances_{source}.json").read_text())
        data["categories"].insert(0, {"id": 0, "name": "shapes-project", "supercategory": "none"})
        (folder / "_annotations.coco.json").write_text(json.dumps(data))
        for image in data["images"]:
            (folder / image["file_name"]).symlink_to(shapes / "coco" / source / image["file_name"])


@pytest.fixture
def sandbox(tmp_path, shapes, weight_cache, monkeypatch):
    """A checkout after ``make install``, with the tiny data at the docs' paths; the current folder for the test."""
    for name in ("configs", "Makefile", "pyproject.toml", "constraints.txt", "constraints-litert.txt", ".venv",
                 "backbones", "heads", "tasks", "hubconf.py"):
        (tmp_path / name).symlink_to(ROOT / name)
    data = tmp_path / "data"
    data.mkdir()
    (data / "shapes").symlink_to(shapes)
    (data / "coco").symlink_to(shapes / "coco")
    for year in ("VOC2007", "VOC2012"):
        _voc(shapes, data / "VOCdevkit" / year)
    _roboflow(shapes, tmp_path / "downloads" / "roboflow")
    (tmp_path / "my_photos").mkdir()
    for image in sorted((shapes / "coco" / "val2017").iterdir())[:3]:
        shutil.copy(image, tmp_path / "my_photos" / image.name)
    home = tmp_path / "home"
    home.mkdir()
    (home / ".cache").symlink_to(weight_cache)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TORCH_HOME", str(home / ".cache" / "torch"))
    monkeypatch.setenv("PATH", f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    previous = torch.hub.get_dir()  # set by an earlier test, it would win over TORCH_HOME
    torch.hub.set_dir(str(home / ".cache" / "torch" / "hub"))
    yield tmp_path
    torch.hub.set_dir(previous)


def _page_params():
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        marks = [pytest.mark.slow] if name in SLOW_PAGES else []
        yield pytest.param(page, id=name, marks=marks)


@pytest.mark.parametrize("page", _page_params())
def test_every_example_runs(page, sandbox):
    name = page.relative_to(ROOT).as_posix()
    namespace = {"__name__": "__main__"}
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}  # not make's child
    ran = set()
    for line, language, code in _blocks(page):
        where = f"{name}:{line}"
        if language in ("bash", "sh", "shell"):
            for command in _commands(code):
                if _not_run(command) is None:
                    _run(command, sandbox, env, where, ran)
        elif language == "python":
            exec(compile(code, where, "exec"), namespace)

