"""analyze: pixel counts against an independent full-image count, the coco-tiny reference, class weights."""

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from roiseg.data import analyze as analyze_mod
from roiseg.data.analyze import analyze, class_weights, load_class_weights
from roiseg.data.prepare import prepare_coco
from roiseg.errors import InputError
from roiseg.synthetic.coco import write_synthetic_coco


def independent_counts(path):
    """Per-class totals and per-bucket ROI counts, with full-image masks and explicit pixel centres."""
    coco = COCO(str(path))
    totals = np.zeros(3, dtype=np.int64)
    buckets = {"small": 0, "medium": 0, "large": 0}
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        h, w = info["height"], info["width"]
        anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=img_id)) if a["category_id"] == 1 and not a["iscrowd"]]
        masks = np.stack([coco.annToMask(a).astype(bool) for a in anns])
        cy, cx = np.mgrid[0:h, 0:w] + 0.5
        for k, a in enumerate(anns):
            x, y, bw, bh = a["bbox"]
            inside = (cx >= x) & (cx < x + bw) & (cy >= y) & (cy < y + bh)
            own = masks[k] & inside
            other = np.delete(masks, k, axis=0).any(axis=0) & ~masks[k] & inside
            totals += [int(inside.sum() - own.sum() - other.sum()), int(own.sum()), int(other.sum())]
            area = a["area"]
            buckets["small" if area < 32**2 else "medium" if area < 96**2 else "large"] += 1
    return totals, buckets


@pytest.fixture(scope="module")
def synthetic_person_json(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn_analyze")
    r = write_synthetic_coco(root, 6, 0, image_hw=(60, 80), seed=5, persons=(3, 5))
    prepare_coco(r["annotations"]["train2017"], root / "annotations")
    return root / "annotations" / "instances_train2017_person_only_no_crowd.json"


def test_counts_equal_independent_count_on_generated_data(synthetic_person_json):
    result = analyze(synthetic_person_json, workers=1)
    totals, buckets = independent_counts(synthetic_person_json)
    assert [result["pixel_counts"][n] for n in ("background", "target", "non_target")] == totals.tolist()
    assert result["pixel_counts"]["non_target"] > 0  # the generated persons overlap
    assert result["roi_size"]["buckets"] == buckets
    assert result["num_images"] == 5 and result["num_instances"] == sum(buckets.values())
    assert sum(result["pixel_ratios"].values()) == pytest.approx(1.0)


def test_rle_persons_and_half_pixel_boxes(tmp_path):
    h, w = 20, 30
    a = np.zeros((h, w), dtype=np.uint8)
    a[2:15, 3:12] = 1
    b = np.zeros((h, w), dtype=np.uint8)
    b[8:20, 9:25] = 1
    comp = mask_utils.encode(np.asfortranarray(b))
    flat = a.T.reshape(-1)  # column-major runs of a, starting with zeros
    edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    runs = np.diff(np.concatenate([[0], edges])).tolist()
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "height": h, "width": w}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 117.0, "bbox": [2.5, 1.5, 10.0, 14.0],
             "segmentation": {"counts": runs, "size": [h, w]}},
            {"id": 2, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 192.0, "bbox": [8.4, 7.6, 17.0, 12.4],
             "segmentation": {"counts": comp["counts"].decode("ascii"), "size": [h, w]}},
        ],
        "categories": [{"id": 1, "name": "person"}],
    }
    path = tmp_path / "rle.json"
    path.write_text(json.dumps(data))
    result = analyze(path, workers=1)
    totals, _ = independent_counts(path)
    assert [result["pixel_counts"][n] for n in ("background", "target", "non_target")] == totals.tolist()
    # inside pixels by hand. ROI 1, x in [2.5, 12.5): centres 2.5 .. 11.5 -> cols 2-11 (10);
    # y in [1.5, 15.5): rows 1-14 (14). ROI 2, x in [8.4, 25.4): cols 8-24 (17); y in [7.6, 20): rows 8-19 (12)
    assert totals.sum() == 10 * 14 + 17 * 12


def test_coco_tiny_reference_ratios(coco_tiny, tmp_path):
    prepare_coco(coco_tiny / "annotations" / "instances_train2017.json", tmp_path)
    result = analyze(tmp_path / "instances_train2017_person_only_no_crowd.json", workers=1)
    assert result["num_images"] == 37 and result["num_instances"] == 101  # ../shared/README.md
    r = result["pixel_ratios"]
    assert (round(r["background"], 4), round(r["target"], 4), round(r["non_target"], 4)) == (0.4941, 0.4721, 0.0338)


def test_worker_processes_give_the_same_result(synthetic_person_json, monkeypatch):
    monkeypatch.setattr(analyze_mod, "IMAGES_PER_TASK", 2)  # 5 images -> 3 tasks over 2 processes
    one = analyze(synthetic_person_json, workers=1)
    two = analyze(synthetic_person_json, workers=2)
    assert one == two
    with pytest.raises(InputError, match="workers"):
        analyze(synthetic_person_json, workers=0)


def test_class_weights_formula():
    # median 0.3: raw weights 0.6, 1, 1.5; sum(w r) = 0.9 -> /0.9
    np.testing.assert_allclose(class_weights([0.5, 0.3, 0.2]), [0.6 / 0.9, 1 / 0.9, 1.5 / 0.9])
    w = class_weights([0.5, 0.3, 0.2])
    assert sum(wi * ri for wi, ri in zip(w, [0.5, 0.3, 0.2])) == pytest.approx(1.0)
    # clipping: raw 0.0194/0.057, 1/0.057, 19/0.057 -> 0.340, 10, 10
    np.testing.assert_allclose(class_weights([0.98, 0.019, 0.001]), [0.98 ** -1 * 0.019 / 0.057, 10.0, 10.0], rtol=1e-6)
    assert class_weights([0.6, 0.4, 0.0])[2] == 10.0


def test_load_class_weights(tmp_path):
    good = tmp_path / "a.json"
    good.write_text(json.dumps({"class_weights": [0.5, 0.7, 9.0]}))
    assert load_class_weights(good) == [0.5, 0.7, 9.0]
    assert load_class_weights(tmp_path / "absent.json") is None
    assert load_class_weights(None) is None
    for bad in ({"class_weights": [1, 2]}, {"pixel_ratios": {}}, {"class_weights": [1, -1, 2]}):
        (tmp_path / "b.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match="b.json"):
            load_class_weights(tmp_path / "b.json")
    (tmp_path / "c.json").write_text("{nope")
    with pytest.raises(InputError, match="c.json"):
        load_class_weights(tmp_path / "c.json")
