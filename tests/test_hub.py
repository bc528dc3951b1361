"""torch.hub entry points (hubconf.py) and models built from configs."""

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from heads.deeplabv3plus import DeepLabV3Plus
from heads.pose import SimpleBaseline
from heads.ssdlite import SSDLite
from tasks.from_config import model_from_config

REPO = str(Path(__file__).parents[1])


def test_hubconf_has_a_model_per_task_config():
    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO) / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert {"ssdlite_mbv3", "ssdlite_mbv2", "ssdlite_mbv1", "ssdlite_mbv4s", "ssdlite_effb0", "deeplabv3plus_mbv2",
            "deeplabv3plus_mbv3",
            "deeplabv3plus_effb0", "pose_mbv2", "pose_mbv3", "pose_effb0", "backbone",
            "torchvision_backbone"} <= names


def test_hubconf_dependencies_name_every_package_its_models_import():
    """torch.hub checks ``dependencies`` before loading hubconf: every third-party package the modules the
    entry points load import at module level is listed."""
    script = """
import ast, sys
from pathlib import Path
import hubconf
for name in ("ssdlite_mbv3", "deeplabv3plus_mbv2", "pose_mbv2"):
    getattr(hubconf, name)()
own = {"backbones", "heads", "tasks", "hubconf"}
found = set()
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if name.split(".")[0] not in own or not path:
        continue
    for node in ast.parse(Path(path).read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            found.add(node.module.split(".")[0])
print(sorted(found - set(sys.stdlib_module_names) - own - {"__future__"}))
print(sorted(hubconf.dependencies))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    imported, listed = (ast.literal_eval(line) for line in done.stdout.strip().splitlines()[-2:])
    assert set(imported) <= set(listed), sorted(set(imported) - set(listed))


@pytest.mark.parametrize("name,kind,kwargs,key,shape", [
    ("ssdlite_mbv3", SSDLite, {"num_classes": 3}, "boxes", (1, 300, 4)),
    ("deeplabv3plus_mbv2", DeepLabV3Plus, {"num_classes": 3, "image_size": 128}, "labels", (1, 96, 128)),
    ("pose_mbv2", SimpleBaseline, {}, "keypoints", (1, 17, 3)),
])
def test_hub_load_builds_the_configs_network(name, kind, kwargs, key, shape):
    model = torch.hub.load(REPO, name, source="local", **kwargs).eval()
    assert isinstance(model, kind)
    with torch.no_grad():
        out = model(torch.randint(0, 256, (1, 3, 96, 128), dtype=torch.uint8))
    assert out[key].shape == shape


def test_weights_load_into_the_hub_model(tmp_path):
    model = model_from_config("pose_mbv2_coco", keypoint_names=["nose", "left_eye", "right_eye"])
    for p in model.parameters():
        p.data.normal_()
    torch.save({f"model.{k}": v for k, v in model.state_dict().items()}, tmp_path / "pose.ckpt")
    loaded = torch.hub.load(REPO, "pose_mbv2", source="local", keypoint_names=["nose", "left_eye", "right_eye"],
                            weights=str(tmp_path / "pose.ckpt"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        model_from_config("configs/no_such.yaml")


def test_a_config_with_its_data_builds_what_the_cli_builds(shapes, tmp_path):
    """The data module of a config's data section, and the task with what the data links (class names, ids, size)."""
    from tasks.data.synthetic import CATEGORIES
    from tasks.from_config import data_from_config, task_from_config

    root = shapes / "coco"
    config = Path(REPO) / "configs" / "demo" / "ssdlite_mbv3_shapes.yaml"
    data = data_from_config(config, root=str(root), image_size=96)
    assert data.image_size == 96 and data.batch_size == 8  # the config's own keys, overridden ones replaced
    task = task_from_config(config, data=data)
    assert task.class_names == list(CATEGORIES.values()) and task.category_ids == sorted(CATEGORIES)
    assert task.image_size == 96 and task.model.image_size == 96
    other = tmp_path / "other.yaml"
    other.write_text("{}")
    with pytest.raises(ValueError, match="must start with ssdlite"):
        task_from_config(other)
