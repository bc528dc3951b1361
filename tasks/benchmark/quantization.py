"""``python -m tasks.benchmark quantization``: how much INT8 costs each backbone, and what QAT wins back, measured.

Depthwise-separable networks are known to lose accuracy under post-training INT8 quantization (their
depthwise filters have per-channel ranges far apart; MobileNetV1 worst). For each backbone asked for,
this trains the demo detector's recipe with that backbone on the same data and budget (the config's
epochs), exports it to INT8 ONNX with the export's defaults (post-training), fine-tunes it with
quantization-aware training for a quarter of the float epochs at a tenth of its learning rate (the QAT
guide's recipe) and exports that to INT8 ONNX and ExecuTorch, and scores the checkpoint and every INT8 file
with the task's evaluator (the numbers ``test`` gives). Every step is a command a user can rerun: each
backbone's config is written beside its run (``OUT/<backbone>/ssdlite_<backbone>.yaml``), and every command it
ran is in ``OUT/<backbone>/commands.log``:

    python -m tasks.detect fit --config CONFIG
    python -m tasks.detect export --config CONFIG --ckpt_path best --int8 true
    python -m tasks.detect fit --config CONFIG --model.init_from BEST --model.quantization qat ...
    python -m tasks.detect test --config CONFIG --ckpt_path FILE   (each INT8 file)

With ``--reuse`` a step whose result an earlier run left under ``OUT`` is not run again.

Writes ``OUT/quantization.md`` and ``quantization.json``.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from backbones import inference_copy

from ..data.detection import DetectionData
from ..deploy.runtime import ExportedModel
from ..detect import DetectionTask
from ..from_config import data_from_config
from .accuracy import score
from .machine import describe_machine, machine_line

DEFAULT_BACKBONES = ("mobilenet_v1", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_lite0")

# How each backbone joins the demo recipe: SSDLite taps expansion layers where the blocks have them
# (MobileNetV1's depthwise-separable layers have none), and torchvision's batch norms get the demo's
# momentum (timm's already use 0.1).
_BACKBONE_SETTINGS: dict[str, dict[str, Any]] = {
    "mobilenet_v1": {"feature_location": "block"},
    "mobilenet_v2": {"feature_location": "expansion", "options": {"bn_momentum": 0.1}},
    "mobilenet_v3_large": {"feature_location": "expansion", "options": {"bn_momentum": 0.1}},
    "efficientnet_lite0": {"feature_location": "expansion"},
}


#: the float fallback row's ``--int8_max_drop``: the issue's bound on QAT's cost
DEFAULT_MAX_DROP = 0.003


def backbone_config(base: dict[str, Any], backbone: str, root: Path, epochs: int | None) -> dict[str, Any]:
    """``base`` (a detection config) with ``backbone`` in place of its own and its runs under ``root``."""
    config = json.loads(json.dumps(base))  # a deep copy of plain data
    settings = _BACKBONE_SETTINGS.get(backbone, {"feature_location": "block"})
    levels = config["model"]["backbone"].get("levels")
    config["model"]["backbone"] = {"name": backbone, **({"levels": levels} if levels else {}), **settings}
    config["trainer"]["default_root_dir"] = str(root)
    if epochs is not None:
        config["trainer"]["max_epochs"] = epochs
    return config


def _run(args: list[str], log: Path) -> None:
    command = [sys.executable, "-m", "tasks.detect", *args]
    with open(log, "a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"`{' '.join(command[1:])}` failed (exit {done.returncode}); its output is in {log}")


def qat_arguments(config: dict[str, Any], root: Path) -> list[str]:
    """``fit`` arguments that make a float ``config``'s run a QAT fine-tune (see docs/guides/qat.md): a quarter of
    its epochs, a tenth of its learning rate, a warm-up of at most 25 steps, runs under ``root``."""
    model, epochs = config["model"], config["trainer"].get("max_epochs") or 4
    arguments = ["--model.quantization", "qat", "--trainer.max_epochs", str(max(1, epochs // 4)),
                 "--trainer.default_root_dir", str(root)]
    lr = model.get("optimizer", {}).get("init_args", {}).get("lr")
    if lr is not None:
        arguments += ["--model.optimizer.init_args.lr", f"{lr / 10:g}"]
    warmup = model.get("scheduler", {}).get("init_args", {}).get("warmup_steps")
    if warmup is not None:
        arguments += ["--model.scheduler.init_args.warmup_steps", str(min(warmup, 25))]
    return arguments


def write_config(config: dict[str, Any], root: Path, head: str, backbone: str) -> Path:
    """``config`` written into ``root`` as ``<head>_<backbone>.yaml``: the name says the task (tasks.from_config)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{head}_{backbone}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def measure(backbone: str, base: dict[str, Any], out: Path, epochs: int | None, head: str = "ssdlite",
            reuse: bool = False, max_drop: float = DEFAULT_MAX_DROP) -> dict[str, Any]:
    """Train, export to INT8 (the defaults, and with the float fallback of ``max_drop``), fine-tune with QAT, export
    that, and score them all for one backbone: the row. With ``reuse``, a step whose result an earlier run left under
    ``out`` is not run again."""
    root = out / backbone
    config = backbone_config(base, backbone, root, epochs)
    config_path = write_config(config, root, head, backbone)
    log = root / "commands.log"

    def step(args: list[str], done: Callable[[], Path | None]) -> tuple[Path, float]:
        start = time.perf_counter()
        found = done() if reuse else None
        if found is None:
            _run(args, log)
            found = done()
        if found is None:
            raise FileNotFoundError(f"`{' '.join(args[:1])}` left no result under {root}; see {log}")
        return found, time.perf_counter() - start

    def newest(folder: Path) -> Callable[[], Path | None]:
        return lambda: next(iter(sorted(folder.glob("lightning_logs/version_*/checkpoints/best.ckpt"),
                                        key=lambda p: p.stat().st_mtime, reverse=True)), None)

    def existing(path: Path) -> Callable[[], Path | None]:
        return lambda: path if path.exists() else None

    ckpt, fit_s = step(["fit", "--config", str(config_path)], newest(root))
    files = {"int8": ckpt.parent.parent / "export" / "model_int8.onnx",
             "fallback": ckpt.parent.parent / "export" / f"model_int8_max_drop_{max_drop:g}.onnx"}
    step(["export", "--config", str(config_path), "--ckpt_path", str(ckpt), "--int8", "true", "--output",
          str(files["int8"])], existing(files["int8"]))
    step(["export", "--config", str(config_path), "--ckpt_path", str(ckpt), "--int8", "true", "--int8_max_drop",
          f"{max_drop:g}", "--output", str(files["fallback"])], existing(files["fallback"]))
    qat_ckpt, qat_s = step(["fit", "--config", str(config_path), "--model.init_from", str(ckpt),
                            *qat_arguments(config, root / "qat")], newest(root / "qat"))
    for form, name, format in (("qat_onnx", "model_int8.onnx", "onnx"), ("qat_pte", "model_int8.pte", "executorch")):
        files[form] = qat_ckpt.parent.parent / "export" / name
        step(["export", "--config", str(config_path), "--ckpt_path", str(qat_ckpt), "--int8", "true", "--format",
              format, "--output", str(files[form])], existing(files[form]))
    data: DetectionData = data_from_config(config_path)
    task = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu")
    row = {"backbone": backbone, "fit_s": _fit_seconds(ckpt, fit_s), "qat_fit_s": _fit_seconds(qat_ckpt, qat_s),
           "checkpoint": str(ckpt), "qat_checkpoint": str(qat_ckpt),
           "fp32": score(inference_copy(task.model.eval()), data, task.evaluator_options())}
    for form, path in files.items():
        exported = ExportedModel(path)
        row[form] = score(exported, data, task.evaluator_options())
        row[f"{form}_file"], row[f"{form}_mb"] = str(path), path.stat().st_size / 1e6
        if form == "fallback":
            row["fallback_kept"] = len(exported.metadata["int8"]["kept_in_float"])
            row["max_drop"] = max_drop
    return row


def _fit_seconds(checkpoint: Path, measured: float) -> float:
    """A fit's wall time: what its run logged (``time/fit_s``, so also that of a run reused), else ``measured``."""
    log = checkpoint.parent.parent / "metrics.csv"
    if log.exists():
        times = [float(row["time/fit_s"]) for row in csv.DictReader(log.open()) if row.get("time/fit_s")]
        if times:
            return max(times)
    return measured


FORMS = {"int8": "post-training INT8 (ONNX)", "fallback": "post-training INT8, float fallback (ONNX)",
         "qat_onnx": "QAT INT8 (ONNX)", "qat_pte": "QAT INT8 (ExecuTorch)"}


def _label(row: dict[str, Any], form: str) -> str:
    if form != "fallback":
        return FORMS[form]
    return f"{FORMS[form]}: `--int8_max_drop {row['max_drop']:g}` kept {row['fallback_kept']} layer(s) in float"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| backbone | form | fit | mAP | change | mAP@0.5 | size (MB) |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        f = r["fp32"]
        lines.append(f"| {r['backbone']} | float checkpoint | {r['fit_s'] / 60:.1f} min | {f['map']:.4f} | | "
                     f"{f['map_50']:.4f} | |")
        for form in FORMS:
            if form in r:
                q, fit = r[form], f"+{r['qat_fit_s'] / 60:.1f} min" if form == "qat_onnx" else ""
                lines.append(f"| {r['backbone']} | {_label(r, form)} | {fit} | {q['map']:.4f} | "
                             f"{q['map'] - f['map']:+.4f} | {q['map_50']:.4f} | {r[f'{form}_mb']:.2f} |")
    return "\n".join(lines)


def quantization(config: Path, backbones: list[str], out: Path, epochs: int | None = None,
                 reuse: bool = False, max_drop: float = DEFAULT_MAX_DROP) -> list[dict[str, Any]]:
    base = yaml.safe_load(config.read_text())
    if base.get("model", {}).get("backbone") is None:
        raise ValueError(f"{config} has no model.backbone to replace")
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(threads=2)
    rows = []
    for i, backbone in enumerate(backbones, 1):
        print(f"[{i}/{len(backbones)}] {backbone}: fit, INT8 export, test (log: {out / backbone / 'commands.log'})",
              flush=True)
        rows.append(measure(backbone, base, out, epochs, config.name.split("_")[0], reuse, max_drop))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = (f"# INT8 cost per backbone\n\nMachine: {machine_line(machine)}\n\nThe recipe of {config} "
            f"(epochs: {epochs or base['trainer'].get('max_epochs')}) with each backbone. Post-training INT8: the "
            f"export's defaults (ONNX Runtime static QDQ, per-channel weights, percentile ranges, first and last "
            f"convolutions in float). Float fallback: `export --int8 true --int8_max_drop {max_drop:g}`, the fewest "
            f"layers in float, chosen by measured sensitivity, that keep the validation mAP within {max_drop:g} of "
            f"the float file's in ONNX Runtime (every convolution a candidate, none kept by default). QAT: "
            f"`fit --model.init_from` the float checkpoint `--model.quantization qat` for "
            f"a quarter of the epochs at a tenth of the learning rate (fit: its own time), exported with the scales "
            f"it learned. Every form scored by the task's evaluator, as `test` scores it.\n\n"
            + table(rows) + "\n")
    (out / "quantization.md").write_text(text)
    (out / "quantization.json").write_text(json.dumps({"machine": machine, "config": str(config), "rows": rows},
                                                      indent=2))
    print(text)
    return rows
