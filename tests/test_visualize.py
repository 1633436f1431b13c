"""Validation picture (layout, colours, image choice), prediction resizing, curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from matplotlib.patches import Rectangle

import roiseg.training.visualize as vis
from roiseg.conventions import DEFAULT_VALIDATION_IMAGES, validation_picture_name
from roiseg.errors import InputError


@pytest.fixture(scope="module")
def val_set(coco_tiny):
    """The real COCO val subset: images of different sizes and aspect ratios."""
    from roiseg.data.dataset import CocoPersonImages

    return CocoPersonImages(coco_tiny / "annotations" / "instances_val2017.json", coco_tiny / "images" / "val2017", (64, 64))


@pytest.fixture()
def warnings_seen():
    """Messages logged by the visualize module (captured directly: independent of propagation)."""
    records: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = _Keep(level=logging.WARNING)
    vis.LOG.addHandler(handler)
    yield records
    vis.LOG.removeHandler(handler)


def _pick_columns(ds) -> list[int]:
    """The default image found in coco-tiny, one portrait image and one crowded image."""
    first = ds.find(DEFAULT_VALIDATION_IMAGES[0])
    recs = [ds.record(i) for i in range(len(ds))]
    portrait = next(i for i, r in enumerate(recs) if r["height"] > r["width"])
    crowded = max(range(len(ds)), key=lambda i: len(ds.instance_masks(i)[0]) if i not in (first, portrait) else -1)
    return [first, portrait, crowded]


# --------------------------------------------------------------------------------------------
# Image choice
# --------------------------------------------------------------------------------------------
def test_select_skips_missing_images_with_a_warning_and_fills_up_to_four(val_set, warnings_seen) -> None:
    indices = vis.select_validation_images(val_set, DEFAULT_VALIDATION_IMAGES)
    # The one default image coco-tiny has comes first; the picture is filled up to four columns with
    # the other validation images in dataset order (a fixed order: the same every epoch and run).
    first = val_set.find(DEFAULT_VALIDATION_IMAGES[0])
    assert indices == [first] + [i for i in range(len(val_set)) if i != first][:3]
    assert len(warnings_seen) == 1
    assert all(name in warnings_seen[0] for name in DEFAULT_VALIDATION_IMAGES[1:])


def test_select_falls_back_to_the_first_four_images(val_set, warnings_seen) -> None:
    assert vis.select_validation_images(val_set, ["nope.jpg", "also_missing.jpg"]) == [0, 1, 2, 3]
    assert any("first 4" in w for w in warnings_seen)


def test_select_keeps_order_and_drops_duplicates(val_set) -> None:
    a, b = val_set.record(5)["file_name"], val_set.record(2)["file_name"]
    assert vis.select_validation_images(val_set, [a, b, a]) == [5, 2, 0, 1]
    assert vis.select_validation_images(val_set, [a, b, a], count=2) == [5, 2]


# --------------------------------------------------------------------------------------------
# Predictions at original resolution
# --------------------------------------------------------------------------------------------
def test_predictions_to_original_resizes_bilinearly_then_takes_argmax() -> None:
    # 4x4 input grid: p(target) = 1 in columns 0-1, 0 in columns 2-3 (background takes the rest).
    p_t = torch.tensor([1.0, 1.0, 0.0, 0.0]).repeat(4, 1)
    probs = torch.stack([1 - p_t, p_t, torch.zeros(4, 4)])[None]  # [1, 3, 4, 4]
    out = vis.predictions_to_original(probs, (8, 6))
    # output column x samples input column (x + 0.5) * 4 / 6 - 0.5, clamped at the border:
    # x=0 -> 0 (1.0), x=1 -> 0.5 (1.0), x=2 -> 1.167 (0.833), x=3 -> 1.833 (0.167), x=4, 5 -> 0
    assert out.shape == (1, 8, 6) and out.dtype == bool
    assert np.array_equal(out[0], np.tile([True, True, True, False, False, False], (8, 1)))
    assert vis.predictions_to_original(torch.zeros(0, 3, 4, 4), (5, 7)).shape == (0, 5, 7)


# --------------------------------------------------------------------------------------------
# The picture
# --------------------------------------------------------------------------------------------
def test_picture_layout_two_rows_by_n_columns(val_set) -> None:
    indices = _pick_columns(val_set)
    preds = [val_set.instance_masks(i)[0] for i in indices]  # a perfect prediction
    fig = vis.build_validation_figure(val_set, indices, preds)
    axes = fig.axes
    assert len(axes) == 2 * len(indices)
    top, bottom = axes[0::2], axes[1::2]
    for col, (t, b, idx) in enumerate(zip(top, bottom, indices)):
        rec = val_set.record(idx)
        k = len(val_set.instance_masks(idx)[0])
        pt, pb = t.get_position(), b.get_position()
        assert pt.y0 > pb.y1  # ground truth above prediction
        assert pt.x0 == pytest.approx(pb.x0, abs=0.02)  # same column
        if col:
            assert pt.x0 > top[col - 1].get_position().x1  # columns left to right
        # each image at its original size and aspect ratio
        assert t.images[0].get_array().shape[:2] == (rec["height"], rec["width"])
        fig_w, fig_h = fig.get_size_inches()
        aspect = (pt.width * fig_w) / (pt.height * fig_h)
        assert aspect == pytest.approx(rec["width"] / rec["height"], rel=0.02)
        assert rec["file_name"] in t.get_title() and f"({k} person" in t.get_title()
        # boxes and numbers in the top row only
        boxes = [p for p in t.patches if isinstance(p, Rectangle)]
        assert len(boxes) == k and all(p.get_edgecolor()[:3] == (1.0, 0.0, 0.0) for p in boxes)
        assert sorted(int(x.get_text()) for x in t.texts) == list(range(1, k + 1))
        assert not b.patches and not b.texts


def test_instance_colours_are_the_same_in_both_rows(val_set) -> None:
    idx = _pick_columns(val_set)[2]  # the crowded image
    gt, _ = val_set.instance_masks(idx)
    fig = vis.build_validation_figure(val_set, [idx], [gt.copy()])
    top_img, bottom_img = (ax.images[0].get_array() for ax in fig.axes)
    assert np.array_equal(top_img, bottom_img)  # perfect prediction: identical overlays
    only = [m & (gt.sum(0) == 1) for m in gt]  # pixels of one instance alone
    colours = [tuple(vis.instance_color(k)) for k in range(len(gt)) if only[k].any()]
    assert len(set(colours[:8])) == min(len(colours), 8)  # distinct colours
    # a missed instance (predicted empty) leaves the bottom image untinted there
    pred = gt.copy()
    pred[0] = False
    fig = vis.build_validation_figure(val_set, [idx], [pred])
    top_img, bottom_img = (ax.images[0].get_array() for ax in fig.axes)
    rgb = cv2.imread(val_set.record(idx)["path"])[:, :, ::-1]
    assert np.array_equal(bottom_img[only[0]], rgb[only[0]])
    assert not np.array_equal(top_img[only[0]], rgb[only[0]])


def test_render_writes_the_png_with_the_figure_proportions(val_set, tmp_path) -> None:
    indices = _pick_columns(val_set)
    preds = [np.zeros_like(val_set.instance_masks(i)[0]) for i in indices]
    out = tmp_path / "run" / validation_picture_name(3)
    assert vis.render_validation_picture(val_set, indices, preds, out) == out
    png = cv2.imread(str(out))
    ratios = [val_set.record(i)["width"] / val_set.record(i)["height"] for i in indices]
    expected_w = (vis.PANEL_HEIGHT_IN * sum(ratios) + vis.LABEL_MARGIN_IN) * vis.DPI
    expected_h = (2 * vis.PANEL_HEIGHT_IN + vis.TITLE_MARGIN_IN) * vis.DPI
    assert png.shape[1] == pytest.approx(expected_w, abs=2) and png.shape[0] == pytest.approx(expected_h, abs=2)
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left behind


def test_render_rejects_mismatched_predictions_without_writing(val_set, tmp_path) -> None:
    idx = _pick_columns(val_set)[2]
    gt, _ = val_set.instance_masks(idx)
    out = tmp_path / "pic.png"
    with pytest.raises(ValueError, match="do not match"):
        vis.render_validation_picture(val_set, [idx], [gt[:-1]], out)
    with pytest.raises(ValueError, match="prediction"):
        vis.render_validation_picture(val_set, [idx], [], out)
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------
def _write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_curves_two_panels_loss_and_miou(tmp_path) -> None:
    records = [
        {"epoch": 1, "train_loss": 1.2, "val_loss": 1.3, "miou": 0.30, "mean_roi_target_iou": 0.5, "box_baseline_roi_target_iou": 0.54},
        {"epoch": 2, "train_loss": 0.9, "val_loss": 1.0, "miou": 0.40, "mean_roi_target_iou": 0.6, "box_baseline_roi_target_iou": 0.54},
        {"epoch": 2, "train_loss": 0.8, "val_loss": 0.95, "miou": 0.45, "mean_roi_target_iou": 0.62, "box_baseline_roi_target_iou": 0.54},  # resumed
        {"epoch": 3, "train_loss": 0.7, "miou": 0.50, "mean_roi_target_iou": None},
    ]
    jsonl = _write_jsonl(tmp_path / "metrics.jsonl", records)
    fig = vis.build_curves_figure(vis.read_metrics(jsonl))
    loss_ax, iou_ax = fig.axes
    lines = {ln.get_label(): ln for ax in fig.axes for ln in ax.get_lines()}
    assert list(lines["train loss"].get_xdata()) == [1, 2, 3]
    assert list(lines["train loss"].get_ydata()) == [1.2, 0.8, 0.7]  # the repeated epoch keeps its last record
    assert list(lines["val loss"].get_xdata()) == [1, 2]
    assert list(lines["mIoU (target, non-target)"].get_ydata()) == [0.30, 0.45, 0.50]
    assert list(lines["mean per-ROI target IoU"].get_xdata()) == [1, 2]
    assert lines["train loss"] in loss_ax.get_lines() and lines["mIoU (target, non-target)"] in iou_ax.get_lines()

    out = vis.plot_curves(jsonl, tmp_path / "curves.png")
    png = cv2.imread(str(out))
    assert png.shape[:2] == (400, 1000)


def test_curves_reject_a_bad_line_naming_the_file_and_line(tmp_path) -> None:
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text('{"epoch": 1, "train_loss": 1.0}\n{not json\n')
    with pytest.raises(InputError, match=r"metrics.jsonl:2"):
        vis.plot_curves(jsonl, tmp_path / "curves.png")
    jsonl.write_text('{"train_loss": 1.0}\n')
    with pytest.raises(InputError, match=r"metrics.jsonl:1: .*epoch"):
        vis.plot_curves(jsonl, tmp_path / "curves.png")
    assert not (tmp_path / "curves.png").exists()
