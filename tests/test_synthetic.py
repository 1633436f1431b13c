"""Generated COCO person data: layout, determinism, valid annotations that match the pixels, counts and sizes."""

import filecmp
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from roiseg.data.prepare import select_persons
from roiseg.synthetic.coco import write_synthetic_coco


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return root, write_synthetic_coco(root, 12, 4, seed=0)


def test_layout_and_report(generated):
    root, report = generated
    for split, n in (("train2017", 12), ("val2017", 4)):
        ann = root / "annotations" / f"instances_{split}.json"
        assert report["annotations"][split] == str(ann)
        files = sorted(p.name for p in (root / "images" / split).iterdir())
        data = json.loads(ann.read_text())
        assert files == sorted(img["file_name"] for img in data["images"]) and len(files) == n
        persons = [a for a in data["annotations"] if a["category_id"] == 1 and not a["iscrowd"]]
        assert report["num_persons"][split] == len(persons)
        img = cv2.imread(str(root / "images" / split / files[0]))
        assert img.shape == (240, 320, 3)
        assert len(report["crowd_image_ids"][split]) == 1


def test_annotations_are_valid_coco(generated):
    root, report = generated
    coco = COCO(report["annotations"]["train2017"])
    cats = {c["id"] for c in coco.dataset["categories"]}
    assert 1 in cats and len(cats) > 1
    multi_polygon = 0
    for ann in coco.dataset["annotations"]:
        if ann["iscrowd"]:
            assert isinstance(ann["segmentation"], dict) and ann["category_id"] == 1
            continue
        for poly in ann["segmentation"]:
            xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
            assert len(poly) >= 6 and len(poly) % 2 == 0
            assert xs.min() >= 0 and xs.max() <= 320 and ys.min() >= 0 and ys.max() <= 240  # pixel coordinates
        multi_polygon += ann["category_id"] == 1 and len(ann["segmentation"]) > 1
        mask = coco.annToMask(ann)
        assert mask.sum() == pytest.approx(ann["area"])
        x, y, w, h = ann["bbox"]
        ys_, xs_ = np.nonzero(mask)
        assert (xs_.min(), ys_.min(), xs_.max() + 1, ys_.max() + 1) == pytest.approx((x, y, x + w, y + h))
    assert multi_polygon >= 3
    assert any(a["category_id"] != 1 for a in coco.dataset["annotations"])
    sel = select_persons(coco.dataset, "train")
    assert sel.dropped_images["crowd"] == 1 and len(sel.images) == 11
    per_image = [len(v) for v in sel.by_image().values()]
    assert min(per_image) >= 1 and max(per_image) <= 5


def test_pixels_follow_the_labels(generated):
    """Persons are painted from their masks: colour edges lie on mask boundaries, not inside masks."""
    root, report = generated
    coco = COCO(report["annotations"]["train2017"])
    on_boundary, inside = [], []
    for info in coco.dataset["images"]:
        img = cv2.imread(str(root / "images" / "train2017" / info["file_name"])).astype(np.float32)
        grad = sum(np.abs(cv2.Sobel(img[..., c], cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(img[..., c], cv2.CV_32F, 0, 1)) for c in range(3))
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=info["id"], catIds=[1], iscrowd=False)):
            m = coco.annToMask(ann)
            eroded = cv2.erode(m, np.ones((5, 5), np.uint8))
            boundary = m.astype(bool) & ~cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool)
            if eroded.any():
                inside.append(grad[eroded.astype(bool)].mean())
                on_boundary.append(grad[boundary].mean())
    assert np.mean(on_boundary) > 2.0 * np.mean(inside)


def test_deterministic_by_seed(tmp_path):
    a = write_synthetic_coco(tmp_path / "a", 3, 1, image_hw=(48, 64), seed=4)
    b = write_synthetic_coco(tmp_path / "b", 3, 1, image_hw=(48, 64), seed=4)
    write_synthetic_coco(tmp_path / "c", 3, 1, image_hw=(48, 64), seed=5)
    for split in ("train2017", "val2017"):
        assert json.loads((tmp_path / "a" / "annotations" / f"instances_{split}.json").read_text()) == json.loads(
            (tmp_path / "b" / "annotations" / f"instances_{split}.json").read_text())
        cmp = filecmp.dircmp(a["images"][split], b["images"][split])
        assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    assert (tmp_path / "a" / "annotations" / "instances_train2017.json").read_text() != (
        tmp_path / "c" / "annotations" / "instances_train2017.json").read_text()
    with pytest.raises(ValueError):
        write_synthetic_coco(tmp_path / "d", 1, 0, persons=(3, 2))


def test_counts_sizes_and_person_range_are_as_asked(tmp_path):
    report = write_synthetic_coco(tmp_path, 12, 4, image_hw=(40, 56), seed=1, persons=(2, 3), crowd=False)
    assert report["num_images"] == {"train2017": 12, "val2017": 4}
    for split, n in (("train2017", 12), ("val2017", 4)):
        data = json.loads(Path(report["annotations"][split]).read_text())
        assert len(data["images"]) == n
        persons = {}
        for a in data["annotations"]:
            if a["category_id"] == 1:
                persons[a["image_id"]] = persons.get(a["image_id"], 0) + 1
        assert all(2 <= persons.get(img["id"], 0) <= 3 for img in data["images"])
        assert sum(persons.values()) == report["num_persons"][split]
        for img in data["images"]:
            decoded = cv2.imread(str(Path(report["images"][split]) / img["file_name"]))
            assert decoded is not None and decoded.shape == (40, 56, 3) == (img["height"], img["width"], 3)
