"""Detection data: COCO and VOC quirks, bad input, and boxes through every augmentation preset."""

import json
import logging

import cv2
import numpy as np
import pytest
import torch

from tasks.data.detection import DetectionData, DetectionDataset, coco_detection_split, voc_detection_split
from tasks.data.transforms import detection_transform
from tasks.evaluation.coco import coco_detection_metrics


def write_image(path, h=60, w=80, gray=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(0).integers(0, 255, (h, w) if gray else (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), image)


@pytest.fixture
def coco_root(tmp_path):
    """Category ids with gaps, a crowd region, an empty image, a degenerate box, grayscale and PNG."""
    root = tmp_path / "coco"
    write_image(root / "train2017" / "a.jpg")
    write_image(root / "train2017" / "b.png", gray=True)
    write_image(root / "train2017" / "c.jpg")
    data = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "width": 80, "height": 60},
            {"id": 3, "file_name": "b.png", "width": 80, "height": 60},
            {"id": 9, "file_name": "c.jpg", "width": 80, "height": 60},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 90, "bbox": [10, 10, 20, 30], "area": 600, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [0, 0, 80, 60], "area": 100, "iscrowd": 1},
            {"id": 3, "image_id": 3, "category_id": 5, "bbox": [70, 50, 30, 30], "area": 100, "iscrowd": 0},
            {"id": 4, "image_id": 3, "category_id": 12, "bbox": [5, 5, 0, 10], "area": 0, "iscrowd": 0},
        ],
        "categories": [{"id": 90, "name": "kite"}, {"id": 5, "name": "bus"}, {"id": 12, "name": "cup"}],
    }
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return root


def test_coco_quirks(coco_root, caplog):
    with caplog.at_level(logging.WARNING):
        split = coco_detection_split(coco_root, "train2017")
    assert split.category_ids == [5, 12, 90] and split.class_names == ["bus", "cup", "kite"]
    by_id = {r.image_id: r for r in split.records}
    assert list(by_id) == [3, 7, 9]  # every image kept, the empty one (9) too
    np.testing.assert_array_equal(by_id[7].boxes, [[10, 10, 30, 40]])  # crowd left out of training
    np.testing.assert_array_equal(by_id[7].labels, [3])  # category 90 -> label 3 (sorted ids)
    np.testing.assert_array_equal(by_id[3].boxes, [[70, 50, 80, 60]])  # clipped to the image
    assert len(by_id[9].boxes) == 0
    assert "dropped 1 degenerate box(es) (no area inside the image) from training and from the eval" in caplog.text
    assert [a["id"] for a in split.coco_gt["annotations"]] == [1, 2, 3]  # nor does evaluation count it as a miss
    assert split.coco_gt["annotations"][1]["iscrowd"] == 1  # evaluation still sees the crowd region
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in split.coco_gt["annotations"] if not a["iscrowd"]]
    metrics = coco_detection_metrics(split.coco_gt, perfect, split.class_names)
    assert metrics["map_50"] == pytest.approx(1.0) and metrics["per_class"]["cup"] == {"ap": None, "ap_50": None}
    image, target = DetectionDataset(split.records, None)[0]  # the grayscale PNG, as it is: the model resizes
    assert image.shape == (3, 60, 80) and image.dtype == torch.uint8
    assert target["image_id"] == split.records[0].image_id and target["file"] == split.records[0].file
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    torch.testing.assert_close(target["boxes"], torch.tensor([[70.0, 50.0, 80.0, 60.0]]))
    image, target = DetectionDataset(split.records, detection_transform("none", 32))[0]  # training: resized
    assert image.shape == (3, 32, 32)
    torch.testing.assert_close(target["boxes"], torch.tensor([[28.0, 26.6667, 32.0, 32.0]]), atol=1e-3, rtol=0)


def test_an_empty_split_is_an_error(tmp_path):
    (tmp_path / "annotations").mkdir()
    empty = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "kite"}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(empty))
    with pytest.raises(ValueError, match="instances_val2017.json' lists no images: an empty split"):
        coco_detection_split(tmp_path, "val2017")


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC"
    write_image(root / "JPEGImages" / "0001.jpg", 100, 120)
    (root / "Annotations").mkdir(parents=True)
    (root / "Annotations" / "0001.xml").write_text("""<annotation><size><width>120</width><height>100</height>
        </size><object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>11</ymin><xmax>50</xmax>
        <ymax>60</ymax></bndbox></object><object><name>cat</name><difficult>1</difficult><bndbox><xmin>61</xmin>
        <ymin>21</ymin><xmax>100</xmax><ymax>90</ymax></bndbox></object></annotation>""")
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("0001\n")
    return root


def test_voc_boxes_and_difficult(voc_root):
    split = voc_detection_split([voc_root], "train", ["cat", "dog"])
    record = split.records[0]
    assert record.image_id == "0001"
    np.testing.assert_array_equal(record.boxes, [[0, 10, 50, 60]])  # 1-based inclusive -> continuous
    np.testing.assert_array_equal(record.labels, [2])
    boxes, labels, difficult = split.voc_gt[0]
    np.testing.assert_array_equal(difficult, [False, True])
    assert [a["iscrowd"] for a in split.coco_gt["annotations"]] == [0, 1]
    with_difficult = voc_detection_split([voc_root], "train", ["cat", "dog"], use_difficult=True)
    assert len(with_difficult.records[0].boxes) == 2


def test_voc_07_plus_12_concatenates_roots(voc_root, tmp_path):
    other = tmp_path / "VOC2012"
    write_image(other / "JPEGImages" / "2008_0001.jpg", 100, 120)
    (other / "Annotations").mkdir(parents=True)
    (other / "Annotations" / "2008_0001.xml").write_text((voc_root / "Annotations" / "0001.xml").read_text())
    (other / "ImageSets" / "Main").mkdir(parents=True)
    (other / "ImageSets" / "Main" / "train.txt").write_text("2008_0001\n")
    data = DetectionData(str(voc_root), format="voc", classes=["cat", "dog"], train_roots=[str(voc_root), str(other)],
                         val_split="train", num_workers=0)
    assert [r.image_id for r in data.split("train").records] == ["0001", "2008_0001"]


# ----------------------------------------------------------------------------- bad input
def test_malformed_json_names_file_and_position(coco_root):
    path = coco_root / "annotations" / "instances_train2017.json"
    path.write_text('{"images": [}')
    with pytest.raises(ValueError, match=r"instances_train2017.json' is not valid JSON: .* line 1, column 13"):
        coco_detection_split(coco_root, "train2017")


def test_unknown_category_names_file_and_annotation(coco_root):
    path = coco_root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["category_id"] = 4
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances_train2017.json': annotation 1 names category_id 4"):
        coco_detection_split(coco_root, "train2017")


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        DetectionData(str(tmp_path), format="coco")


def test_missing_image_is_reported_before_training(coco_root):
    """Building the data module reads the categories only; the file checks run before the stage's first step."""
    (coco_root / "train2017" / "c.jpg").unlink()
    data = DetectionData(str(coco_root), val_split="train2017", num_workers=0)
    assert data.class_names and not data._splits
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) of .* do not exist: .*c.jpg"):
        data.check("validate")


def test_corrupt_image_names_the_file(coco_root):
    (coco_root / "train2017" / "a.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    split = coco_detection_split(coco_root, "train2017")
    dataset = DetectionDataset(split.records, None)
    with pytest.raises(ValueError, match=r"a.jpg' cannot be decoded"):
        dataset[1]


def test_image_size_disagreeing_with_annotation(coco_root):
    write_image(coco_root / "train2017" / "c.jpg", 61, 80)
    split = coco_detection_split(coco_root, "train2017")
    dataset = DetectionDataset(split.records, None)
    with pytest.raises(ValueError, match=r"c.jpg' is 80x61 but its annotation says 80x60"):
        dataset[2]


def test_malformed_xml_and_unknown_class(voc_root):
    xml = voc_root / "Annotations" / "0001.xml"
    good = xml.read_text()
    with pytest.raises(ValueError, match=r"0001.xml'.*'dog', which is not in data.classes"):
        voc_detection_split([voc_root], "train", ["cat"])
    xml.write_text(good[:40])
    with pytest.raises(ValueError, match=r"0001.xml' is malformed XML"):
        voc_detection_split([voc_root], "train", ["cat", "dog"])


# ----------------------------------------------------------------------------- transforms
@pytest.mark.parametrize("preset", ["ssdlite", "ssd", "none"])
def test_boxes_surround_the_drawn_object_after_every_preset(preset):
    """A red rectangle drawn on the image; its mask rides along to find it whatever colours do."""
    image = np.full((200, 300, 3), 90, np.uint8)
    image[50:120, 100:180] = (255, 0, 0)
    mask = np.zeros((200, 300), np.uint8)
    mask[50:120, 100:180] = 1
    transform = detection_transform(preset, 160)
    kept = 0
    for seed in range(60):
        torch.manual_seed(seed)
        transform.set_random_seed(seed)
        out = transform(image=image, mask=mask, bboxes=np.array([[100, 50, 180, 120]], np.float32),
                        labels=np.array([3]))
        assert out["image"].shape == (160, 160, 3)
        ys, xs = np.nonzero(out["mask"] == 1)
        if not len(out["bboxes"]):
            continue  # cropped away with its centre
        kept += 1
        assert list(out["labels"]) == [3]
        x1, y1, x2, y2 = out["bboxes"][0]
        assert abs(xs.min() - x1) <= 1.5 and abs(ys.min() - y1) <= 1.5
        assert abs(xs.max() + 1 - x2) <= 1.5 and abs(ys.max() + 1 - y2) <= 1.5
        if preset != "ssd":  # no photometric change: the drawn pixels themselves are inside the box
            red = (out["image"][..., 0] > 200) & (out["image"][..., 1] < 60)
            ry, rx = np.nonzero(red)
            assert rx.min() >= x1 - 1.5 and rx.max() + 1 <= x2 + 1.5 and ry.min() >= y1 - 1.5
    assert kept >= 40


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown augmentation preset 'mosaic'"):
        detection_transform("mosaic", 320)
