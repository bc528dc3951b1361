"""The layers of ARCHITECTURE.md, kept: what each package may import, no import cycle, no side effect at import."""

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backbones", "heads", "tasks")

# Within Kestrel, what the modules of a package may import, by prefix (ARCHITECTURE.md, "Layers"). A program
# (``__main__.py``) is not part of its package's library: ``python -m backbones pick`` runs the benchmark's picker.
ALLOWED = {
    "backbones": ("backbones",),
    "heads": ("backbones", "heads"),
    "tasks.evaluation": ("tasks.evaluation", "tasks.deploy.runtime"),
    "tasks.data": ("backbones", "heads", "tasks.data", "tasks.evaluation"),
    "tasks.reporting": ("tasks.reporting", "tasks.data", "tasks.evaluation", "tasks.provenance",
                        "tasks.deploy.runtime"),
    "tasks.deploy.mobile": ("heads", "tasks.qat"),  # the networks' resize, as an app's; a QAT network's INT8
    "tasks.deploy.litert_convert": (),  # run in a subprocess of its own
    "tasks.deploy.runtime": ("tasks.deploy.mobile",),
    "tasks.deploy.agreement": (),
    "tasks.deploy.quantize": (),
    "tasks.deploy.fallback": ("tasks.deploy.quantize",),
    # the float fallback scores its candidates with the task's evaluator
    "tasks.deploy.export": ("backbones", "tasks.deploy", "tasks.evaluation", "tasks.provenance", "tasks.qat"),
    "tasks.provenance": ("backbones",),  # the version
    "tasks.optim": (),
    "tasks.qat": (),
}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """Kestrel modules ``name`` imports anywhere in its file (functions too), but for type checking only."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    checking = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    skipped = {id(n) for node in checking for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    every = modules()
    return {m for m in found if m in every and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {name: imports(name, path) for name, path in modules().items()}


def test_each_layer_imports_only_the_layers_below(graph):
    broken = []
    for name, targets in graph.items():
        if name.endswith("__main__"):
            continue
        rule = max((prefix for prefix in ALLOWED if name == prefix or name.startswith(prefix + ".")), key=len,
                   default=None)
        if rule is None:
            continue
        broken += [f"{name} -> {t}" for t in targets
                   if not any(t == ok or t.startswith(ok + ".") for ok in (*ALLOWED[rule], rule))]
    assert not broken, broken


def test_no_import_cycle(graph):
    """Between modules, counting imports inside functions too (a cycle deferred to call time is still one)."""
    importers = defaultdict(set)
    for name, targets in graph.items():
        for target in targets:
            if not name.startswith(target + "."):  # a module imports its own package's __init__
                importers[name].add(target)
    cycles, state = [], {}

    def visit(node, trail):
        state[node] = "open"
        for target in sorted(importers[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(trail[trail.index(target):] + [target]))
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_importing_kestrel_changes_no_plotting_backend():
    """A notebook that loads a predictor keeps its inline plots: no module picks a matplotlib backend, and Kestrel's
    own figures are ``matplotlib.figure.Figure`` objects, not pyplot's (torchmetrics and pycocotools import pyplot,
    which chooses nothing until it draws)."""
    for path in modules().values():
        text = path.read_text()
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, path
    code = (
        "import matplotlib\n"
        "before = dict.__getitem__(matplotlib.rcParams, 'backend')\n"
        "import tasks.detect, tasks.segment, tasks.pose, tasks.deploy.predictor, tasks.reporting, tasks.benchmark\n"
        "import tasks.benchmark.grid, tasks.benchmark.run, hubconf\n"
        "assert dict.__getitem__(matplotlib.rcParams, 'backend') == before, matplotlib.rcParams['backend']\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_building_a_data_module_reads_no_image(shapes, tmp_path):
    """Parsing a config builds the data module on every process: it reads the class or keypoint names the model
    is told of and nothing else (here no image exists) until ``setup`` parses the splits and ``prepare_data``
    checks their files."""
    import shutil

    from tasks.data.detection import DetectionData
    from tasks.data.pose import PoseData
    from tasks.data.segmentation import SegmentationData
    from tasks.data.synthetic import VOC_SYNTHETIC_CLASSES

    shutil.copytree(shapes / "coco" / "annotations", tmp_path / "annotations")  # the annotation files alone
    built = [DetectionData(str(tmp_path)), SegmentationData(str(tmp_path), format="coco"), PoseData(str(tmp_path)),
             DetectionData(str(tmp_path / "no_voc"), format="voc"),
             SegmentationData(str(tmp_path / "no_voc"), classes=VOC_SYNTHETIC_CLASSES)]
    assert built[0].class_names == ["person", "circle", "square", "triangle"] and built[2].num_keypoints == 17
    built[0].setup("validate")
    with pytest.raises(FileNotFoundError, match=r"image\(s\) of .*instances_val2017.json do not exist"):
        built[0].check("validate")
