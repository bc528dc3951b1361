"""``python -m tasks.benchmark quantization``: how much INT8 costs each backbone, measured.

Depthwise-separable networks are known to lose accuracy under post-training INT8 quantization (their
depthwise filters have per-channel ranges far apart; MobileNetV1 worst). For each backbone asked for,
this trains the demo detector's recipe with that backbone on the same data and budget (the config's
epochs), exports it to INT8 ONNX with the export's defaults, and scores the checkpoint and the INT8
file with the task's evaluator (the numbers ``test`` gives). Every step is a command a user can rerun:
each backbone's config is written beside its run (``OUT/<backbone>/config.yaml``), then

    python -m tasks.detect fit --config OUT/<backbone>/config.yaml
    python -m tasks.detect export --config OUT/<backbone>/config.yaml --ckpt_path best --int8 true
    python -m tasks.detect test --config OUT/<backbone>/config.yaml --ckpt_path best   (and the INT8 file)

Writes ``OUT/quantization.md`` and ``quantization.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
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


def _newest(root: Path, pattern: str) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no {pattern} under {root}")
    return found[-1]


def measure(backbone: str, base: dict[str, Any], out: Path, epochs: int | None) -> dict[str, Any]:
    """Train, export to INT8 and score one backbone; the row of the table."""
    root = out / backbone
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(backbone_config(base, backbone, root, epochs), sort_keys=False))
    log = root / "commands.log"
    start = time.perf_counter()
    _run(["fit", "--config", str(config_path)], log)
    fit_s = time.perf_counter() - start
    ckpt = _newest(root, "lightning_logs/version_*/checkpoints/best.ckpt")
    int8 = ckpt.parent.parent / "export" / "model_int8.onnx"
    _run(["export", "--config", str(config_path), "--ckpt_path", str(ckpt), "--int8", "true", "--output", str(int8)],
         log)
    data: DetectionData = data_from_config(config_path)
    task = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu")
    fp32_metrics = score(inference_copy(task.model.eval()), data, task.evaluator_options())
    int8_metrics = score(ExportedModel(int8), data, task.evaluator_options())
    return {"backbone": backbone, "fit_s": fit_s, "checkpoint": str(ckpt), "int8_file": str(int8),
            "int8_mb": int8.stat().st_size / 1e6, "fp32": fp32_metrics, "int8": int8_metrics}


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| backbone | fit | mAP fp32 | mAP INT8 | change | mAP@0.5 fp32 | mAP@0.5 INT8 | INT8 MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        f, q = r["fp32"], r["int8"]
        lines.append(f"| {r['backbone']} | {r['fit_s'] / 60:.1f} min | {f['map']:.4f} | {q['map']:.4f} | "
                     f"{q['map'] - f['map']:+.4f} | {f['map_50']:.4f} | {q['map_50']:.4f} | {r['int8_mb']:.2f} |")
    return "\n".join(lines)


def quantization(config: Path, backbones: list[str], out: Path, epochs: int | None = None) -> list[dict[str, Any]]:
    base = yaml.safe_load(config.read_text())
    if base.get("model", {}).get("backbone") is None:
        raise ValueError(f"{config} has no model.backbone to replace")
    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine(threads=2)
    rows = []
    for i, backbone in enumerate(backbones, 1):
        print(f"[{i}/{len(backbones)}] {backbone}: fit, INT8 export, test (log: {out / backbone / 'commands.log'})",
              flush=True)
        rows.append(measure(backbone, base, out, epochs))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = (f"# INT8 cost per backbone\n\nMachine: {machine_line(machine)}\n\nThe recipe of {config} "
            f"(epochs: {epochs or base['trainer'].get('max_epochs')}) with each backbone; INT8: the export's "
            f"defaults (ONNX Runtime static QDQ, per-channel weights, percentile ranges); both scored by the "
            f"task's evaluator, as `test` scores them.\n\n"
            + table(rows) + "\n")
    (out / "quantization.md").write_text(text)
    (out / "quantization.json").write_text(json.dumps({"machine": machine, "config": str(config), "rows": rows},
                                                      indent=2))
    print(text)
    return rows
