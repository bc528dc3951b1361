"""The COCO and VOC parsers, fed random valid and broken files: they return a split or raise the documented
errors (``ValueError`` / ``FileNotFoundError``) with a message naming the file; nothing else comes out."""

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.data.coco import load_coco
from tasks.data.detection import coco_detection_split
from tasks.data.pose import coco_pose_split
from tasks.data.voc import read_annotation

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# any JSON value, small
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 1000) | st.floats(-10, 1e4) | st.just(float("nan"))
    | st.text(max_size=4),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)
numbers = st.integers(-5, 300) | st.floats(-5, 300) | st.sampled_from([float("nan"), float("inf")])
maybe = lambda strategy: strategy | json_values  # noqa: E731 - a valid value, or anything at all


@st.composite
def coco_files(draw):
    """An annotation file: mostly COCO-shaped, with any field possibly missing, of another type or out of range."""
    categories = draw(st.lists(st.fixed_dictionaries({
        "id": maybe(st.integers(1, 5)), "name": maybe(st.sampled_from(["person", "dog", "kite"])),
        "keypoints": maybe(st.just(["nose", "left_eye", "right_eye"])), "skeleton": maybe(st.just([[1, 2]]))},
    ), max_size=3))
    images = draw(st.lists(st.fixed_dictionaries({
        "id": maybe(st.integers(1, 4)), "file_name": maybe(st.just("a.jpg")), "width": maybe(numbers),
        "height": maybe(numbers)}), max_size=3))
    annotations = draw(st.lists(st.fixed_dictionaries({
        "id": maybe(st.integers(1, 9)), "image_id": maybe(st.integers(0, 5)), "category_id": maybe(st.integers(0, 6)),
        "bbox": maybe(st.lists(numbers, min_size=0, max_size=5)), "area": maybe(numbers),
        "iscrowd": maybe(st.integers(0, 1)), "num_keypoints": maybe(st.integers(0, 3)),
        "keypoints": maybe(st.lists(numbers, max_size=10))}), max_size=5))
    data = {"images": images, "annotations": annotations, "categories": categories}
    for key in draw(st.sets(st.sampled_from(list(data)), max_size=1)):  # sometimes a list is missing
        del data[key]
    if draw(st.integers(0, 9)) == 0:
        return json.dumps(draw(json_values))  # not an object at all
    text = json.dumps(data)
    return text[: draw(st.integers(0, len(text)))] if draw(st.integers(0, 9)) == 0 else text  # sometimes truncated


def named(err: Exception, path: Path) -> bool:
    return str(path) in str(err)


@SETTINGS
@given(coco_files())
def test_coco_parsers_raise_only_documented_errors(text):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "annotations").mkdir()
        path = root / "annotations" / "instances_val2017.json"
        path.write_text(text)
        for parse in (lambda: load_coco(path), lambda: coco_detection_split(root, "val2017")):
            try:
                parse()
            except (ValueError, FileNotFoundError) as err:
                assert named(err, path), err
        try:
            coco = load_coco(path)
        except (ValueError, FileNotFoundError):
            pass
        else:  # what COCOeval and the per-class results count on: objects told apart by id, classes by name
            ids = [ann["id"] for ann in coco.data["annotations"]]
            assert len(set(ids)) == len(ids) and len(set(coco.class_names)) == len(coco.class_names)
        keypoints = root / "annotations" / "person_keypoints_val2017.json"
        keypoints.write_text(text)
        try:
            coco_pose_split(root, "val2017", None, train=False)
        except (ValueError, FileNotFoundError) as err:
            assert named(err, keypoints), err


xml_text = st.text(alphabet=st.sampled_from(list("<>/ =\"'abcdefghijklmnopqrstuvwxyz0123456789.-\n")), max_size=80)


@st.composite
def voc_files(draw):
    """An annotation XML: VOC-shaped with any element's text random, missing or repeated; or not XML at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(xml_text)
    field = lambda strategy: draw(st.none() | strategy)  # noqa: E731 - None: the element is left out
    number = st.integers(-5, 300).map(str) | (st.floats(-5, 300) | st.just(float("nan"))).map(str) | xml_text
    size = "".join(f"<{k}>{v}</{k}>" for k, v in (("width", field(number)), ("height", field(number)))
                   if v is not None)
    objects = []
    for _ in range(draw(st.integers(0, 3))):
        name = field(st.sampled_from(["dog", "cat", "zebra", ""]) | xml_text)
        box = "".join(f"<{k}>{field(number) or ''}</{k}>" for k in ("xmin", "ymin", "xmax", "ymax")
                      if draw(st.booleans()) or True)
        difficult = field(st.sampled_from(["0", "1"]) | xml_text)
        objects.append(f"<object>{'' if name is None else f'<name>{name}</name>'}"
                       f"{'' if difficult is None else f'<difficult>{difficult}</difficult>'}"
                       f"{'' if draw(st.integers(0, 5)) == 0 else f'<bndbox>{box}</bndbox>'}</object>")
    return f"<annotation><size>{size}</size>{''.join(objects)}</annotation>"


@SETTINGS
@given(voc_files())
def test_voc_parser_raises_only_documented_errors(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "0001.xml"
        path.write_text(text)
        try:
            read_annotation(path, ["dog", "cat"])
        except (ValueError, FileNotFoundError) as err:
            assert named(err, path), err
