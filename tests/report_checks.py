"""What every task's ``test`` report must hold (used by the task CLI tests)."""

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image


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
