"""roiseg.evaluation.roi with fake MaskModels on a small generated COCO set (and the whole-box floor on
coco-tiny val against the reference figure of ../shared/README.md)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from roiseg.conventions import (
    BACKGROUND, DEFAULT_PREPROCESSING, NON_TARGET, NUM_CLASSES, SIZE_BUCKETS, TARGET, coco_bbox_to_roi, preprocess,
    roi_inside_mask, size_bucket,
)
from roiseg.data.coco import decode_mask
from roiseg.data.targets import roi_targets
from roiseg.evaluation.roi import FIGURES, MaskModel, evaluate
from roiseg.evaluation.report import format_table, table_rows, write_markdown, write_report_json, write_worst_picture
from roiseg.errors import InputError

IMAGE_HW = (96, 128)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict:
    """4 generated val images (one with a crowd person, dropped), 2-4 overlapping persons each."""
    from roiseg.synthetic.coco import write_synthetic_coco

    root = tmp_path_factory.mktemp("evalset")
    info = write_synthetic_coco(root, n_train=0, n_val=4, image_hw=IMAGE_HW, seed=3, persons=(2, 4))
    return {"ann": Path(info["annotations"]["val2017"]), "images": Path(info["images"]["val2017"]),
            "crowd": set(info["crowd_image_ids"]["val2017"])}


def _persons(ann_path: Path, crowd: set) -> list[tuple[dict, list[dict]]]:
    """(image, its person annotations) of the non-crowd images, read here without roiseg's selection."""
    data = json.loads(ann_path.read_text())
    out = []
    for img in data["images"]:
        anns = [a for a in data["annotations"] if a["image_id"] == img["id"] and a["category_id"] == 1]
        if img["id"] not in crowd and anns:
            out.append((img, anns))
    return out


def _truth(img: dict, anns: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    hw = (img["height"], img["width"])
    masks = np.stack([decode_mask(a["segmentation"], hw) for a in anns])
    rois = np.clip(np.stack([coco_bbox_to_roi(a["bbox"], hw) for a in anns]), 0, 1).astype(np.float32)
    return roi_targets(masks, rois), rois


class PerfectModel:
    """Returns the one-hot ground truth (input size = original size, so no resize changes it)."""

    preprocessing = DEFAULT_PREPROCESSING

    def __init__(self, synth: dict) -> None:
        self.input_hw = IMAGE_HW
        self.table = {}
        for img, anns in _persons(synth["ann"], synth["crowd"]):
            truth, rois = _truth(img, anns)
            self.table[rois.tobytes()] = np.stack([truth == c for c in range(NUM_CLASSES)], axis=1).astype(np.float32)

    def image_feed(self, image_bgr: np.ndarray) -> np.ndarray:
        return preprocess(image_bgr, self.input_hw, self.preprocessing)

    def roi_probabilities(self, image: np.ndarray, rois: np.ndarray) -> np.ndarray:
        assert image.shape == (1, 3, *self.input_hw) and image.dtype == np.float32
        return self.table[np.asarray(rois, np.float32).tobytes()]


class WholeBoxModel:
    """Predicts every pixel of the ROI (centre rule on its input grid) as target."""

    preprocessing = DEFAULT_PREPROCESSING

    def __init__(self, input_hw: tuple[int, int], extra_rois: int = 0) -> None:
        self.input_hw = input_hw
        self.extra_rois = extra_rois

    def image_feed(self, image_bgr: np.ndarray) -> np.ndarray:
        return preprocess(image_bgr, self.input_hw, self.preprocessing)

    def roi_probabilities(self, image: np.ndarray, rois: np.ndarray) -> np.ndarray:
        n = len(rois) + self.extra_rois
        out = np.zeros((n, NUM_CLASSES, *self.input_hw), np.float32)
        for k in range(n):
            box = roi_inside_mask(rois[k % len(rois)], self.input_hw)
            out[k, TARGET], out[k, BACKGROUND] = box, ~box
        return out


def test_fake_models_are_mask_models(synth) -> None:
    assert isinstance(PerfectModel(synth), MaskModel) and isinstance(WholeBoxModel((64, 80)), MaskModel)


def test_perfect_model_scores_one_everywhere(synth) -> None:
    ev = evaluate(PerfectModel(synth), synth["ann"], synth["images"], workers=2, show_progress=False)
    r = ev.report
    persons = _persons(synth["ann"], synth["crowd"])
    assert r["images"] == {"selected": 3, "evaluated": 3, "skipped": {"missing": 0, "unreadable": 0, "size_mismatch": 0}}
    assert r["dropped_images"] == {"crowd": 1}
    assert r["num_rois"] == sum(len(a) for _, a in persons) == len(r["rois"])
    for name in ("target_iou", "target_boundary_iou", "non_target_iou"):
        assert r["figures"][name]["all"]["mean"] == pytest.approx(1.0), name
    assert r["figures"]["non_target_iou"]["all"]["rois"] > 0  # the generated persons overlap
    for key in ("AP", "AP50", "AP75"):
        assert r["mask_ap"][key] == pytest.approx(1.0), key
    for key, bucket in (("APs", "small"), ("APm", "medium"), ("APl", "large")):
        has = any(size_bucket(a["area"]) == bucket for _, anns in persons for a in anns)
        assert (r["mask_ap"][key] == pytest.approx(1.0)) if has else r["mask_ap"][key] is None


def test_crowded_and_alone_split_the_rois_by_other_persons_inside(synth) -> None:
    """The ``crowded`` / ``alone`` columns hold the ROIs whose ground truth has / has not other persons' pixels
    inside the box (counted here from the targets), with their own means; the table shows both."""
    r = evaluate(WholeBoxModel((64, 80)), synth["ann"], synth["images"], workers=2, show_progress=False).report
    crowded = {}
    for img, anns in _persons(synth["ann"], synth["crowd"]):
        truth, _ = _truth(img, anns)
        crowded.update({a["id"]: bool((truth[k] == NON_TARGET).any()) for k, a in enumerate(anns)})
    figs = r["figures"]["target_iou"]
    for group, want in (("crowded", True), ("alone", False)):
        ious = [roi["target_iou"] for roi in r["rois"] if crowded[roi["ann_id"]] is want]
        assert figs[group]["rois"] == len(ious) > 0, group
        assert figs[group]["mean"] == pytest.approx(float(np.mean(ious))), group
    assert r["figures"]["non_target_iou"]["alone"]["rois"] == 0
    assert {"crowded", "alone"} <= set(format_table(r).splitlines()[0].split())
    rows = table_rows(r)
    assert all(len(row) == len(rows[0]) for row in rows)  # the AP rows padded to every column
    assert all(roi["others_inside"] is crowded[roi["ann_id"]] for roi in r["rois"])


def _independent_floor(synth: dict, input_hw: tuple[int, int]) -> dict[str, list[float]]:
    """Per bucket, the whole-box IoUs: box on the input grid, bilinear back, > 0.5, vs the true target."""
    out: dict[str, list[float]] = {b: [] for b in ("all", *SIZE_BUCKETS)}
    for img, anns in _persons(synth["ann"], synth["crowd"]):
        truth, rois = _truth(img, anns)
        for k, a in enumerate(anns):
            box = cv2.resize(roi_inside_mask(rois[k], input_hw).astype(np.float32), (img["width"], img["height"]),
                             interpolation=cv2.INTER_LINEAR) > 0.5
            gt = truth[k] == TARGET
            value = (box & gt).sum() / (box | gt).sum()
            out["all"].append(value)
            out[size_bucket(a["area"])].append(value)
    return out


def test_whole_box_model_scores_exactly_the_floor(synth) -> None:
    input_hw = (64, 80)  # not the image size: the floor goes through this grid
    ev = evaluate(WholeBoxModel(input_hw), synth["ann"], synth["images"], workers=0, show_progress=False)
    figs = ev.report["figures"]
    expected = _independent_floor(synth, input_hw)
    for bucket, values in expected.items():
        floor = figs["box_floor_target_iou"][bucket]
        assert floor["rois"] == len(values)
        if values:
            assert floor["mean"] == pytest.approx(float(np.mean(values)), abs=1e-12), bucket
            assert figs["target_iou"][bucket]["mean"] == pytest.approx(floor["mean"], abs=1e-12), bucket
        else:
            assert floor["mean"] is None
    assert figs["non_target_iou"]["all"]["mean"] == 0.0  # the box predicts no other person
    assert 0.0 <= ev.report["mask_ap"]["AP50"] < 1.0


def test_missing_and_unreadable_images_are_skipped_and_counted(synth, tmp_path, caplog, monkeypatch) -> None:
    images = tmp_path / "images"
    shutil.copytree(synth["images"], images)
    persons = _persons(synth["ann"], synth["crowd"])
    (images / persons[0][0]["file_name"]).unlink()
    (images / persons[1][0]["file_name"]).write_bytes(b"not a jpeg")
    monkeypatch.setattr(logging.getLogger("roiseg"), "propagate", True)  # setup_logging turns it off
    with caplog.at_level(logging.WARNING, logger="roiseg"):
        ev = evaluate(WholeBoxModel((64, 80)), synth["ann"], images, show_progress=False)
    r = ev.report
    assert r["images"]["selected"] == 3 and r["images"]["evaluated"] == 1
    assert r["images"]["skipped"] == {"missing": 1, "unreadable": 1, "size_mismatch": 0}
    assert r["num_rois"] == len(persons[2][1])
    assert "skipped" in caplog.text and persons[0][0]["file_name"] in caplog.text
    (images / persons[2][0]["file_name"]).unlink()
    with pytest.raises(InputError, match="could be read"):
        evaluate(WholeBoxModel((64, 80)), synth["ann"], images, show_progress=False)


def test_annotations_without_persons_are_refused(synth, tmp_path) -> None:
    data = json.loads(synth["ann"].read_text())
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] != 1]
    ann = tmp_path / "no_persons.json"
    ann.write_text(json.dumps(data))
    with pytest.raises(InputError, match="no image with a usable"):
        evaluate(WholeBoxModel((64, 80)), ann, synth["images"], show_progress=False)


def test_a_model_with_the_wrong_roi_count_is_refused(synth) -> None:
    with pytest.raises(InputError, match=r"returned \d+ masks for \d+ ROIs"):
        evaluate(WholeBoxModel((64, 80), extra_rois=1), synth["ann"], synth["images"], show_progress=False)


def test_report_files_and_worst_picture(synth, tmp_path) -> None:
    ev = evaluate(WholeBoxModel((64, 80)), synth["ann"], synth["images"], worst=3, max_images=2, show_progress=False)
    r = ev.report
    assert r["images"]["selected"] == 2
    ious = sorted(x["target_iou"] for x in r["rois"] if x["target_iou"] is not None)
    assert [w.target_iou for w in ev.worst] == pytest.approx(ious[:3])
    assert all(w.pred.shape == w.truth.shape == w.image_bgr.shape[:2] for w in ev.worst)

    table = format_table(r)
    assert "whole-box floor IoU" in table and f"{r['figures']['target_iou']['all']['mean']:.4f}" in table
    assert json.loads(write_report_json(tmp_path / "out" / "report.json", r).read_text()) == r
    md = write_markdown(tmp_path / "report.md", r).read_text()
    assert "| target boundary IoU |" in md and "| mask AP |" in md
    png = write_worst_picture(tmp_path / "worst.png", ev.worst)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "report.md", "worst.png"]  # no temporary left
    assert set(r["figures"]) == set(FIGURES)


def test_whole_box_floor_on_coco_tiny_val_matches_reference(coco_tiny) -> None:
    """../shared/README.md: the whole box at 640x640, resized back, scores 0.538 on the 118 val ROIs."""
    ev = evaluate(WholeBoxModel((640, 640)), coco_tiny / "annotations" / "instances_val2017.json",
                  coco_tiny / "images" / "val2017", workers=2, show_progress=False)
    figs = ev.report["figures"]
    assert ev.report["num_rois"] == 118
    assert figs["box_floor_target_iou"]["all"]["mean"] == pytest.approx(0.538, abs=0.0015)
    assert figs["target_iou"]["all"]["mean"] == pytest.approx(figs["box_floor_target_iou"]["all"]["mean"], abs=1e-12)


def test_probabilities_back_at_original_size_are_the_argmax_of_the_bilinear_resize() -> None:
    from roiseg.runtime.session import to_original_size

    rng = np.random.default_rng(0)
    probs = rng.random((3, NUM_CLASSES, 16, 20)).astype(np.float32)
    probs[0, :, :4] = 0.25  # ties: the first class wins, as np.argmax
    target, labels = to_original_size(probs, (37, 23), keep=(TARGET,))
    full, labels_all = to_original_size(probs, (37, 23))
    for k in range(3):
        resized = cv2.resize(probs[k].transpose(1, 2, 0), (23, 37), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(labels[k], resized.argmax(axis=2))
        np.testing.assert_array_equal(target[k, 0], resized[:, :, TARGET])
        np.testing.assert_array_equal(full[k], resized.transpose(2, 0, 1))
    np.testing.assert_array_equal(labels_all, labels)
    same, same_labels = to_original_size(full, (37, 23))  # already at the original size (a raw-image model)
    np.testing.assert_array_equal(same, full) and np.testing.assert_array_equal(same_labels, labels)


def test_rois_without_a_score_are_counted_in_the_summary():
    from roiseg.evaluation.report import _summary_line
    from roiseg.evaluation.roi import unscored_rois

    records = [{"target_iou": 0.5}, {"target_iou": float("nan")}, {"target_iou": 0.7}, {"target_iou": float("nan")}]
    report = {"images": {"evaluated": 2, "selected": 2, "skipped": {}}, "num_rois": 4, "images_per_s": 1.0,
              "input_hw": [64, 64], "dilation_ratio": 0.02, "unscored_rois": unscored_rois(records)}
    assert report["unscored_rois"] == 2
    assert "4 ROIs (2 not scored: no target pixel inside the box" in _summary_line(report)
    assert "not scored" not in _summary_line({**report, "unscored_rois": 0})
