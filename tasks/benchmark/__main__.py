"""``python -m tasks.benchmark [--grid | training | runtimes | quantization | pick]``; see ``tasks.benchmark``.

``--markdown PATH`` (every command but ``pick``) also puts what the command wrote into a documentation page, with
the command line, the machine and the date (``tasks.benchmark.page``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from . import __doc__ as overview
from .page import command_line, write_page
from .run import DEFAULT_CONFIGS
from .subjects import RUNTIMES


def _main_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tasks.benchmark", description=overview.split("\n\n")[0],
        epilog="Subcommands: `python -m tasks.benchmark training --help`, `... runtimes --help`, "
        "`... quantization --help`, `... pick --help`.")
    parser.add_argument("configs", nargs="*", help="task configs (paths or names in configs/); default: the three "
                        "demo configs and the COCO configs")
    parser.add_argument("--ckpt_path", default="best", help="best / last (the newest under each config's "
                        "trainer.default_root_dir), a checkpoint path (one config), or none: untrained weights")
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES), choices=RUNTIMES)
    parser.add_argument("--no-references", action="store_true", help="leave torchvision's reference models out")
    parser.add_argument("--no-accuracy", action="store_true", help="time only; do not run `test` on each form")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per form and batch size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                        help="input images of detection and segmentation (pose: crops at its input size)")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--out", default="runs/benchmark", help="output folder")
    parser.add_argument("--grid", action="store_true", help="the width x resolution grid of SSDLite on MobileNetV2 "
                        "and V3 instead (see --grid-runtime)")
    parser.add_argument("--grid-runtime", default="onnx", choices=("eager", "onnx"))
    _markdown_option(parser)
    return parser


def _markdown_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", metavar="PATH", help="also write the tables into this markdown page (e.g. "
                        "docs/benchmarks/demo.md), with this command line, the machine and the date; a rerun of the "
                        "same command replaces its own block of the page")


def _recorder(printed: list[str]) -> Callable[[str], None]:
    """``print``, keeping what was printed."""
    def say(text: str) -> None:
        print(text)
        printed.append(text)
    return say


def _training(argv: list[str]) -> None:
    from .training import training

    parser = argparse.ArgumentParser(
        prog="python -m tasks.benchmark training",
        description="training loader, bare torchvision loop (detection) and fit: images per second")
    parser.add_argument("--config", default="configs/demo/ssdlite_mbv3_shapes.yaml",
                        help="a task config (default: the demo detector's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", default="runs/benchmark/training")
    _markdown_option(parser)
    args = parser.parse_args(argv)
    printed: list[str] = []
    training(Path(args.config), args.steps, args.warmup, Path(args.out), say=_recorder(printed))
    if args.markdown:
        _write(args.markdown, ["training", *argv], "\n".join(printed), title="Training speed")


def _runtimes(argv: list[str]) -> None:
    from .runtimes import runtimes

    parser = argparse.ArgumentParser(prog="python -m tasks.benchmark runtimes",
                                     description="a checkpoint in PyTorch beside its exported files")
    parser.add_argument("checkpoint", help="a Kestrel checkpoint (best.ckpt)")
    parser.add_argument("exported", nargs="+", help="its exported files (.onnx, OpenVINO .xml)")
    parser.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"),
                        help="input images (default 480 640; pose: the crop size)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=20)
    _markdown_option(parser)
    args = parser.parse_args(argv)
    printed: list[str] = []
    try:
        runtimes(args.checkpoint, args.exported, tuple(args.size), args.batch, args.threads, args.repeats,
                 say=_recorder(printed))
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.markdown:
        _write(args.markdown, ["runtimes", *argv], "\n".join(printed), title="A checkpoint beside its exported files")


def _quantization(argv: list[str]) -> None:
    from .quantization import DEFAULT_BACKBONES, DEFAULT_MAX_DROP, quantization

    parser = argparse.ArgumentParser(
        prog="python -m tasks.benchmark quantization",
        description="fp32 against INT8 accuracy per backbone: each trained with the same detection recipe, exported "
        "to INT8 ONNX (the defaults, and with the float fallback of --int8_max_drop), fine-tuned with QAT and "
        "exported again (ONNX, ExecuTorch), every form scored by `test`")
    parser.add_argument("backbones", nargs="*", default=list(DEFAULT_BACKBONES),
                        help=f"registered backbone names (default: {' '.join(DEFAULT_BACKBONES)})")
    parser.add_argument("--config", default="configs/demo/ssdlite_mbv3_shapes.yaml",
                        help="the detection recipe (default: the demo detector's)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the config's)")
    parser.add_argument("--out", default="runs/benchmark/quantization")
    parser.add_argument("--reuse", action="store_true",
                        help="keep what an earlier run left under --out (a checkpoint, an exported file) instead of "
                             "making it again: a run stopped halfway goes on where it stopped")
    parser.add_argument("--int8_max_drop", type=float, default=DEFAULT_MAX_DROP,
                        help=f"the float fallback row's bound (default: {DEFAULT_MAX_DROP})")
    _markdown_option(parser)
    args = parser.parse_args(argv)
    try:
        quantization(Path(args.config), args.backbones, Path(args.out), args.epochs, args.reuse, args.int8_max_drop)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        parser.error(str(err))
    if args.markdown:
        _write(args.markdown, ["quantization", *argv], (Path(args.out) / "quantization.md").read_text())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["quantization"]:
        _quantization(argv[1:])
        return 0
    if argv[:1] == ["training"]:
        _training(argv[1:])
        return 0
    if argv[:1] == ["runtimes"]:
        _runtimes(argv[1:])
        return 0
    if argv[:1] == ["pick"]:
        from .pick import main as pick

        return pick(argv[1:], prog="python -m tasks.benchmark pick")
    parser = _main_parser()
    args = parser.parse_args(argv)
    if any(b < 1 for b in args.batch) or args.repeats < 1:
        parser.error("--batch sizes and --repeats must be positive")
    if args.grid:
        from .grid import grid

        grid(runtime=args.grid_runtime, batches=args.batch, repeats=args.repeats, threads=args.threads, out=args.out)
        if args.markdown:
            _write(args.markdown, argv, (Path(args.out) / "grid.md").read_text())
        return 0
    from .run import run

    try:
        run(args.configs or DEFAULT_CONFIGS, None if args.ckpt_path == "none" else args.ckpt_path, args.runtimes,
            not args.no_references, args.batch, args.repeats, args.threads, tuple(args.size),
            args.calibration_images, not args.no_accuracy, args.out)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    if args.markdown:
        names = ", ".join(Path(c).stem for c in args.configs) if args.configs else "the default configs"
        _write(args.markdown, argv, (Path(args.out) / "benchmark.md").read_text(), title=f"Kestrel benchmark: {names}",
               files=args.out)
    return 0


def _write(path: str, argv: list[str], markdown: str, title: str | None = None, files: str | None = None) -> None:
    written = write_page(path, command_line(argv), markdown, title=title, files=files)
    print(f"Wrote {written}")


if __name__ == "__main__":
    sys.exit(main())
