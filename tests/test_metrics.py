"""SegMetrics against IoUs computed by hand on tiny tensors, state merging, and the box baseline
on the real COCO subset against the reference figure of ../shared/README.md."""

from __future__ import annotations

import pytest
import torch

import roiseg.training.metrics as metrics_mod
from roiseg.training.metrics import SegMetrics

T, F_ = True, False

# Three ROIs on 2x3 grids. Areas: 500 (small), 5000 (medium), 20000 (large).
TARGETS = torch.tensor(
    [
        [[1, 1, 2], [0, 1, 0]],
        [[0, 2, 2], [1, 1, 0]],
        [[0, 0, 0], [0, 0, 0]],
    ],
    dtype=torch.uint8,
)
PRED = torch.tensor(
    [
        [[1, 0, 2], [1, 1, 2]],  # the last pixel is outside ROI 0
        [[0, 2, 1], [1, 0, 0]],
        [[0, 0, 0], [0, 0, 0]],
    ]
)
INSIDE = torch.tensor(
    [
        [[T, T, T], [T, T, F_]],
        [[T, T, T], [T, T, T]],
        [[F_, F_, F_], [F_, F_, F_]],  # a degenerate ROI: no inside pixel
    ]
)
AREAS = torch.tensor([500.0, 5000.0, 20000.0])

# By hand, over the inside pixels (target, pred) pairs:
#   ROI 0: (1,1) (1,0) (2,2) (0,1) (1,1)        ROI 1: (0,0) (2,2) (2,1) (1,1) (1,0) (0,0)
# class 1: inter 2+1 = 3, |pred| 3+2 = 5, |gt| 3+2 = 5 -> 3 / 7
# class 2: inter 1+1 = 2, |pred| 1+1 = 2, |gt| 1+2 = 3 -> 2 / 3
# class 0: inter 0+2 = 2, |pred| 1+3 = 4, |gt| 1+2 = 3 -> 2 / 5
# per-ROI target IoU: ROI 0 2/4, ROI 1 1/3, ROI 2 empty union -> skipped
# box baseline (target = whole inside): ROI 0 3/5, ROI 1 2/6, ROI 2 no inside pixel -> skipped
# boundary IoU: on a 2x3 grid d = max(1, round(0.02 * sqrt(13))) = 1 and every pixel is within 1 of
# the border, so a mask's boundary is the whole mask: the same as the per-ROI target IoU
EXPECTED = {
    "iou_background": 2 / 5,
    "iou_target": 3 / 7,
    "iou_non_target": 2 / 3,
    "miou": (3 / 7 + 2 / 3) / 2,
    "mean_roi_target_iou": (2 / 4 + 1 / 3) / 2,
    "roi_target_iou_small": 2 / 4,
    "roi_target_iou_medium": 1 / 3,
    "roi_target_iou_large": None,
    "box_baseline_roi_target_iou": (3 / 5 + 2 / 6) / 2,
    "mean_roi_target_boundary_iou": (2 / 4 + 1 / 3) / 2,
    "num_rois": 3,
}


def _assert_matches(result: dict, expected: dict) -> None:
    assert set(expected) <= set(result)
    for key, value in expected.items():
        if value is None:
            assert result[key] is None, key
        else:
            assert result[key] == pytest.approx(value, abs=1e-12), key


def test_metrics_match_hand_computed_ious() -> None:
    m = SegMetrics()
    m.update(PRED, TARGETS, AREAS, inside=INSIDE)
    _assert_matches(m.compute(), EXPECTED)


def test_inside_as_float_with_channel_axis_is_accepted() -> None:
    m = SegMetrics()
    m.update(PRED, TARGETS, AREAS, inside=INSIDE[:, None].float())
    _assert_matches(m.compute(), EXPECTED)


def test_without_inside_every_pixel_counts_and_there_is_no_box_baseline() -> None:
    m = SegMetrics()
    m.update(PRED, TARGETS, AREAS)
    r = m.compute()
    # ROI 0's outside pixel (target 0, predicted 2) now counts: |pred 2| = 3 -> 2 / 4;
    # ROI 2's six pixels count as background: |gt 0| = 2 + 2 + 6 = 10, |pred 0| = 1 + 3 + 6 = 10,
    # inter 0 + 2 + 6 = 8 -> 8 / 12
    assert r["iou_non_target"] == pytest.approx(2 / 4)
    assert r["iou_target"] == pytest.approx(3 / 7)
    assert r["iou_background"] == pytest.approx(8 / 12)
    assert r["box_baseline_roi_target_iou"] is None


def test_batches_and_ranks_merge_by_summing_states(monkeypatch) -> None:
    monkeypatch.setattr(metrics_mod, "ROI_CHUNK", 1)  # also exercises the chunked update
    a, b = SegMetrics(), SegMetrics()
    a.update(PRED[:1], TARGETS[:1], AREAS[:1], inside=INSIDE[:1])
    b.update(PRED[1:], TARGETS[1:], AREAS[1:], inside=INSIDE[1:])
    merged = SegMetrics()
    merged.load_state(a.state() + b.state())  # what all_reduce(SUM) does
    _assert_matches(merged.compute(), EXPECTED)
    # two updates on one instance accumulate the same way
    a.update(PRED[1:], TARGETS[1:], AREAS[1:], inside=INSIDE[1:])
    _assert_matches(a.compute(), EXPECTED)


def test_missed_target_counts_as_zero_and_reset_clears() -> None:
    m = SegMetrics()
    tgt = torch.tensor([[[1, 1, 0, 0]]], dtype=torch.uint8)
    m.update(torch.zeros(1, 1, 4, dtype=torch.long), tgt, torch.tensor([50.0**2]))
    r = m.compute()
    assert r["mean_roi_target_iou"] == 0.0 and r["roi_target_iou_medium"] == 0.0
    assert r["iou_target"] == 0.0
    assert r["iou_non_target"] is None  # no non-target anywhere: undefined, left out of the mean
    assert r["miou"] == 0.0
    m.reset()
    r = m.compute()
    assert r["num_rois"] == 0 and r["miou"] is None and r["mean_roi_target_iou"] is None


def test_boundary_iou_matches_the_reference_boundary_on_a_larger_grid() -> None:
    """Boundary IoU (Cheng et al. 2021) of a one-pixel shift, against boundary-iou-api's cv2 code."""
    import cv2
    import numpy as np

    hw = (100, 100)  # d = round(0.02 * 141.4) = 3

    def ref_boundary(mask: np.ndarray) -> np.ndarray:
        padded = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
        eroded = cv2.erode(padded, np.ones((3, 3), np.uint8), iterations=3)[1:-1, 1:-1]
        return mask & ~eroded.astype(bool)

    gt = np.zeros(hw, bool)
    gt[20:80, 30:70] = True
    shifted = np.roll(gt, 1, axis=1)
    bg, bs = ref_boundary(gt), ref_boundary(shifted)
    expected = (bg & bs).sum() / (bg | bs).sum()
    m = SegMetrics()
    targets = torch.from_numpy(gt.astype(np.uint8))[None]
    m.update(torch.from_numpy(shifted.astype(np.int64))[None], targets, torch.tensor([2400.0]))
    r = m.compute()
    assert r["mean_roi_target_boundary_iou"] == pytest.approx(expected, abs=1e-12)
    assert r["mean_roi_target_boundary_iou"] < r["mean_roi_target_iou"] == pytest.approx(39 / 41)


def test_bad_inputs_are_rejected() -> None:
    m = SegMetrics()
    with pytest.raises(ValueError, match="areas"):
        m.update(PRED, TARGETS, AREAS[:2])
    with pytest.raises(ValueError, match="class ids"):
        m.update(PRED + 1, TARGETS, AREAS)
    with pytest.raises(ValueError, match="state"):
        m.load_state(torch.zeros(3))


def test_box_baseline_on_coco_tiny_val_matches_reference(coco_tiny) -> None:
    """../shared/README.md: predicting the whole box scores 0.536 at 640x640 on the 118 val ROIs."""
    import numpy as np

    from roiseg.conventions import roi_inside_mask
    from roiseg.data.dataset import CocoPersonImages
    from roiseg.data.targets import roi_targets

    hw = (640, 640)
    ds = CocoPersonImages(coco_tiny / "annotations" / "instances_val2017.json", coco_tiny / "images" / "val2017", hw)
    m = SegMetrics()
    for i in range(len(ds)):
        masks, rois = ds.instance_masks(i, hw)  # nearest-neighbour resize, as the dataset's targets
        targets = torch.from_numpy(roi_targets(masks, rois))
        inside = torch.from_numpy(np.stack([roi_inside_mask(r, hw) for r in rois]))
        m.update(inside.to(torch.uint8), targets, torch.zeros(len(rois)), inside=inside)  # TARGET (1) on the box
    r = m.compute()
    assert r["num_rois"] == 118
    assert r["mean_roi_target_iou"] == pytest.approx(0.536, abs=0.0015)
    assert r["box_baseline_roi_target_iou"] == pytest.approx(r["mean_roi_target_iou"], abs=1e-12)
