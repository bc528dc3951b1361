"""What the task CLI tests share: the demo configs shrunk to seconds, run folders, and what a report must hold."""

import json
import os
import re
import signal
from pathlib import Path

import numpy as np
from PIL import Image
from pytorch_lightning.callbacks import Callback

DEMO_CONFIGS = Path(__file__).parents[1] / "configs" / "demo"


def demo_args(config: str, root, run_dir, image_size: str, *extra: str) -> list[str]:
    """A demo config (``configs/demo/<config>.yaml``) on ``root``, shrunk to seconds: small images,
    batches of 4 (segmentation: crops of that size), no loader workers, no progress bar, CSV logs in
    ``run_dir``."""
    return [
        "--config", str(DEMO_CONFIGS / f"{config}.yaml"), "--data.root", str(root), "--data.image_size", image_size,
        "--data.batch_size", "4", "--data.num_workers", "0", "--trainer.default_root_dir", str(run_dir),
        "--trainer.enable_progress_bar", "false", "--trainer.logger.class_path", "pytorch_lightning.loggers.CSVLogger",
        "--trainer.logger.init_args.save_dir", str(run_dir),
        *(["--data.crop_size", image_size] if config.startswith("deeplabv3plus") else []), *extra,
    ]


def latest_version(run_dir: Path) -> Path:
    """The newest ``lightning_logs/version_N`` of a run folder."""
    return max((run_dir / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))


def read_metrics(run_dir: Path) -> dict:
    """The newest run's ``report/metrics.json``."""
    return json.loads((latest_version(run_dir) / "report" / "metrics.json").read_text())


def check_report(folder: Path, headline: list[str], plots: set[str], backbone: str) -> dict:
    """metrics.json, report.md whose numbers equal it, non-trivial PNG plots, a self-contained report.html."""
    metrics = json.loads((folder / "metrics.json").read_text())
    markdown = (folder / "report.md").read_text()
    for key in headline:
        value = metrics[key]
        shown = "n/a" if value is None else f"{value:.4f}"
        assert f"| {key} | {shown} |" in markdown, key
    assert f"| backbone | {backbone} |" in markdown
    for field in ( "parameters (M)", "GFLOPs (one forward)", "checkpoint sha256", "Kestrel",
                  "evaluation wall time (s)"):
        assert f"| {field} |" in markdown, field
    assert {p.stem for p in folder.glob("*.png")} >= plots
    for png in folder.glob("*.png"):
        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 5, png.name
        assert f"![{png.stem}]({png.name})" in markdown
    page = (folder / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,', page)) == len(list(folder.glob("*.png")))
    return metrics


class SigtermAt(Callback):
    """A callback (``--trainer.callbacks+=cli_runs.SigtermAt``) that sends this process SIGTERM once ``step``
    training steps are done, as a scheduler or ``timeout`` stops a run."""

    def __init__(self, step: int = 2):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            # Lightning's handler, or the signal would end the test process itself
            assert callable(signal.getsignal(signal.SIGTERM)), "no SIGTERM handler: not in the main thread?"
            os.kill(os.getpid(), signal.SIGTERM)
