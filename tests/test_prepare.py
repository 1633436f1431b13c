"""prepare-coco rules on a hand-made COCO file and on the real coco-tiny subset."""

import json
import logging

import pytest
from pycocotools.coco import COCO

from roiseg.data.prepare import prepare_coco, select_persons, subset_indices

SQUARE = [[10, 10, 30, 10, 30, 40, 10, 40]]


def _ann(ann_id, image_id, category_id=1, iscrowd=0, bbox=(10, 10, 20, 30), segmentation=None):
    if segmentation is None:
        segmentation = {"counts": [100 * 80], "size": [80, 100]} if iscrowd else SQUARE
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
            "bbox": list(bbox), "area": 600.0, "segmentation": segmentation}


def hand_made():
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 80, "width": 100} for i in range(1, 8)]
    anns = [
        _ann(1, 1), _ann(2, 1, bbox=(40, 10, 20, 30), segmentation=[[40, 10, 60, 10, 60, 40, 40, 40]]),
        _ann(3, 1, category_id=3),  # a car next to the persons: dropped, image kept
        _ann(4, 2), _ann(5, 2, iscrowd=1),  # crowd person: whole image dropped
        _ann(6, 3, category_id=2),  # no person
        # image 4 has no annotation at all
        _ann(7, 5, bbox=(10, 10, 0, 30)),  # zero-area bbox: skipped; image left without a person
        _ann(8, 6, segmentation=SQUARE + [[1, 1, 2, 2]]),  # one short polygon removed, person kept
        _ann(9, 6, segmentation=[[1, 1, 5, 5]]),  # only a short polygon: skipped
        _ann(10, 7),
    ]
    return {"info": {"year": 2017}, "licenses": [{"id": 1}], "images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                           {"id": 2, "name": "bicycle"}, {"id": 3, "name": "car"}]}


def test_select_persons_rules():
    sel = select_persons(hand_made(), "hand.json")
    assert [img["id"] for img in sel.images] == [1, 6, 7]
    assert [a["id"] for a in sel.annotations] == [1, 2, 8, 10]
    assert sel.annotations[2]["segmentation"] == SQUARE  # the 2-point polygon was removed
    assert dict(sel.dropped_images) == {"crowd": 1, "no_person": 3}
    assert dict(sel.skipped) == {"zero_area_bbox": 1, "short_polygon": 2, "empty_segmentation": 1}
    # idempotent
    again = select_persons({"images": sel.images, "annotations": sel.annotations}, "again.json")
    assert [a["id"] for a in again.annotations] == [1, 2, 8, 10] and not again.skipped and not again.dropped_images


def test_prepare_writes_loadable_files(tmp_path):
    src = tmp_path / "instances_train2017.json"
    src.write_text(json.dumps(hand_made()))
    report = prepare_coco(src, tmp_path / "out", subsets=[2], seed=0)
    full = tmp_path / "out" / "instances_train2017_person_only_no_crowd.json"
    sub = tmp_path / "out" / "instances_train2017_person_only_no_crowd_2.json"
    assert [w["path"] for w in report["written"]] == [str(full), str(sub)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([full.name, sub.name])  # no temp files left
    coco = COCO(str(full))
    assert sorted(coco.getImgIds()) == [1, 6, 7]
    assert coco.dataset["categories"] == [{"id": 1, "name": "person", "supercategory": "person"}]
    assert coco.dataset["info"] == {"year": 2017}
    assert coco.annToMask(coco.loadAnns([1])[0]).sum() == 20 * 30
    sub_coco = COCO(str(sub))
    assert len(sub_coco.getImgIds()) == 2
    assert {a["image_id"] for a in sub_coco.dataset["annotations"]} == set(sub_coco.getImgIds())
    assert report["dropped_images"] == {"crowd": 1, "no_person": 3}


def test_subsets_are_deterministic_nested_and_capped(tmp_path, caplog):
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 80, "width": 100} for i in range(1, 41)]
    data = {"images": images, "annotations": [_ann(i, i) for i in range(1, 41)], "categories": []}
    src = tmp_path / "instances_val2017.json"
    src.write_text(json.dumps(data))

    def ids(name, out):
        return [img["id"] for img in json.loads((out / name).read_text())["images"]]

    logger = logging.getLogger("roiseg")
    logger.addHandler(caplog.handler)  # the CLI's logging set-up stops propagation to the root logger
    try:
        prepare_coco(src, tmp_path / "a", subsets=[20, 5, 100], seed=3)
    finally:
        logger.removeHandler(caplog.handler)
    assert any("100" in r.getMessage() and "40" in r.getMessage() for r in caplog.records)
    prepare_coco(src, tmp_path / "b", subsets=[20, 5], seed=3)
    prepare_coco(src, tmp_path / "c", subsets=[20], seed=4)
    a20, a5 = ids("instances_val2017_person_only_no_crowd_20.json", tmp_path / "a"), ids("instances_val2017_person_only_no_crowd_5.json", tmp_path / "a")
    assert len(a20) == 20 and len(a5) == 5 and set(a5) <= set(a20)
    assert a20 == sorted(a20)  # file order kept
    assert a20 == ids("instances_val2017_person_only_no_crowd_20.json", tmp_path / "b")
    assert a20 != ids("instances_val2017_person_only_no_crowd_20.json", tmp_path / "c")
    assert len(ids("instances_val2017_person_only_no_crowd_100.json", tmp_path / "a")) == 40
    assert list(subset_indices(3, 10, 0)) == [0, 1, 2]


def test_prepare_coco_tiny_matches_an_independent_selection(coco_tiny, tmp_path):
    src = coco_tiny / "annotations" / "instances_train2017.json"
    raw = json.loads(src.read_text())
    crowd = {a["image_id"] for a in raw["annotations"] if a["category_id"] == 1 and a["iscrowd"]}
    persons = [a for a in raw["annotations"] if a["category_id"] == 1 and not a["iscrowd"] and a["image_id"] not in crowd]
    expected_images = {a["image_id"] for a in persons}

    prepare_coco(src, tmp_path, subsets=[500, 100, 10])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        ["instances_train2017_person_only_no_crowd.json", "instances_train2017_person_only_no_crowd_500.json",
         "instances_train2017_person_only_no_crowd_100.json", "instances_train2017_person_only_no_crowd_10.json"]
    )
    coco = COCO(str(tmp_path / "instances_train2017_person_only_no_crowd.json"))
    assert set(coco.getImgIds()) == expected_images and len(expected_images) == 37  # README: 37 images
    assert len(coco.getAnnIds()) == len(persons) == 101  # README: 101 ROIs
    assert all(a["iscrowd"] == 0 and a["category_id"] == 1 for a in coco.dataset["annotations"])
    assert len(json.loads((tmp_path / "instances_train2017_person_only_no_crowd_10.json").read_text())["images"]) == 10


@pytest.mark.parametrize("n", [0, -5])
def test_subset_must_be_positive(tmp_path, n):
    from roiseg.errors import InputError

    src = tmp_path / "instances_train2017.json"
    src.write_text(json.dumps(hand_made()))
    with pytest.raises(InputError, match="subset"):
        prepare_coco(src, tmp_path / "out", subsets=[n])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_bbox_is_skipped_counted_and_never_reaches_analyze(bad, tmp_path):
    from roiseg.data.analyze import analyze

    data = hand_made()
    data["annotations"].append(_ann(11, 7, bbox=(bad, 10, 20, 30)))
    sel = select_persons(data, "hand.json")
    assert sel.skipped["non_finite_bbox"] == 1 and 11 not in [a["id"] for a in sel.annotations]
    src = tmp_path / "instances_train2017.json"
    src.write_text(json.dumps(data))  # NaN / Infinity as Python's json writes them
    report = prepare_coco(src, tmp_path / "out")
    assert report["skipped_annotations"]["non_finite_bbox"] == 1
    out = tmp_path / "out" / "instances_train2017_person_only_no_crowd.json"
    assert [a["id"] for a in json.loads(out.read_text())["annotations"]] == [1, 2, 8, 10]
    # a file that was never prepared: the shared rule drops it there too
    result = analyze(src, workers=1)
    assert result["num_instances"] == 4 and result["skipped_annotations"]["non_finite_bbox"] == 1
