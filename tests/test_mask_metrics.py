"""roiseg.metrics against values computed independently here, on hand-made masks.

References: IoU with numpy; Boundary IoU with the reference code of Cheng et al. 2021
(boundary-iou-api ``mask_to_boundary``: one pixel of zero padding, ``cv2.erode`` with a 3x3 kernel
``d`` times); COCO AP from the definition (101-point interpolated precision, 10 IoU thresholds).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from roiseg.metrics.coco_ap import AP_KEYS, coco_mask_ap, detection
from roiseg.metrics.masks import (
    boundary_dilation,
    boundary_intersection_union,
    class_intersection_union,
    erode,
    intersection_union,
    iou,
    mask_boundary,
    per_roi_confusion,
)


# --------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------
def ref_boundary(mask: np.ndarray, dilation_ratio: float = 0.02) -> np.ndarray:
    """boundary-iou-api ``mask_to_boundary`` (Cheng et al. 2021), verbatim up to names."""
    h, w = mask.shape
    img_diag = np.sqrt(h**2 + w**2)
    dilation = int(round(dilation_ratio * img_diag))
    if dilation < 1:
        dilation = 1
    new_mask = cv2.copyMakeBorder(mask.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    kernel = np.ones((3, 3), dtype=np.uint8)
    new_mask_erode = cv2.erode(new_mask, kernel, iterations=dilation)
    mask_erode = new_mask_erode[1 : h + 1, 1 : w + 1]
    return (mask.astype(np.uint8) - mask_erode).astype(bool)


def ref_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def ref_boundary_iou(pred: np.ndarray, gt: np.ndarray, dilation_ratio: float = 0.02) -> float:
    return ref_iou(ref_boundary(pred, dilation_ratio), ref_boundary(gt, dilation_ratio))


def square(hw: tuple[int, int], y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros(hw, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def random_blobs(rng: np.random.Generator, hw: tuple[int, int], n: int) -> np.ndarray:
    """[n, H, W] bool: random ellipses and rectangles, some touching the image border."""
    out = np.zeros((n, *hw), dtype=np.uint8)
    for k in range(n):
        for _ in range(3):
            cx, cy = int(rng.integers(0, hw[1])), int(rng.integers(0, hw[0]))
            axes = (int(rng.integers(1, max(2, hw[1] // 2))), int(rng.integers(1, max(2, hw[0] // 2))))
            if rng.random() < 0.5:
                cv2.ellipse(out[k], (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
            else:
                cv2.rectangle(out[k], (cx, cy), (cx + axes[0], cy + axes[1]), 1, -1)
    return out.astype(bool)


# --------------------------------------------------------------------------------------------
# The numpy implementation (roiseg evaluate, no torch) gives the torch one's numbers
# --------------------------------------------------------------------------------------------
def test_numpy_metrics_equal_the_torch_metrics_of_training() -> None:
    from roiseg.metrics import numpy_masks as npm

    rng = np.random.default_rng(7)
    for hw in ((37, 53), (120, 90)):
        pred = rng.integers(0, 3, (5, *hw)).astype(np.uint8)
        pred[:2] = np.where(random_blobs(rng, hw, 2), 1, np.where(random_blobs(rng, hw, 2), 2, 0))
        true = np.where(random_blobs(rng, hw, 5), 1, np.where(random_blobs(rng, hw, 5), 2, 0)).astype(np.uint8)
        true[4], pred[4] = 0, 0  # an empty ROI: both give NaN
        conf_np, conf_t = npm.per_roi_confusion(pred, true), per_roi_confusion(torch.from_numpy(pred), torch.from_numpy(true))
        np.testing.assert_array_equal(conf_np, conf_t.numpy())
        for cls in range(3):
            np.testing.assert_array_equal(npm.iou(*npm.class_intersection_union(conf_np, cls)),
                                          iou(*class_intersection_union(conf_t, cls)).numpy())
        a, b = pred == 1, true == 1
        np.testing.assert_array_equal(npm.iou(*npm.intersection_union(a, b)),
                                      iou(*intersection_union(torch.from_numpy(a), torch.from_numpy(b))).numpy())
        for d in (1, npm.boundary_dilation(hw), 9):
            got = npm.iou(*npm.boundary_intersection_union(a, b, d))
            want = iou(*boundary_intersection_union(torch.from_numpy(a), torch.from_numpy(b), d)).numpy()
            np.testing.assert_array_equal(got, want)
        assert np.isnan(got[4]) and not np.isnan(got[:4]).any()
    with pytest.raises(ValueError, match="outside 0..2"):
        npm.per_roi_confusion(np.full((1, 2, 2), 3, np.uint8), np.zeros((1, 2, 2), np.uint8))


# --------------------------------------------------------------------------------------------
# IoU of a class
# --------------------------------------------------------------------------------------------
def test_confusion_and_class_iou_match_numpy() -> None:
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 3, size=(4, 9, 7))
    tgt = rng.integers(0, 3, size=(4, 9, 7))
    valid = rng.random((4, 9, 7)) < 0.7
    conf = per_roi_confusion(torch.from_numpy(pred), torch.from_numpy(tgt).to(torch.uint8), torch.from_numpy(valid))
    assert conf.shape == (4, 3, 3) and conf.dtype == torch.int64
    for n in range(4):
        for t in range(3):
            for p in range(3):
                assert int(conf[n, t, p]) == int(((tgt[n] == t) & (pred[n] == p) & valid[n]).sum())
    for cls in range(3):
        inter, union = class_intersection_union(conf, cls)
        for n in range(4):
            P, G = (pred[n] == cls) & valid[n], (tgt[n] == cls) & valid[n]
            assert int(inter[n]) == int((P & G).sum()) and int(union[n]) == int((P | G).sum())


def test_iou_is_nan_on_empty_union_and_one_when_perfect() -> None:
    a = torch.from_numpy(np.stack([square((10, 10), 2, 8, 3, 6), np.zeros((10, 10), bool)]))
    inter, union = intersection_union(a, a)
    out = iou(inter, union)
    assert out[0] == 1.0 and math.isnan(float(out[1]))


def test_class_ids_out_of_range_are_rejected() -> None:
    with pytest.raises(ValueError, match="class ids"):
        per_roi_confusion(torch.full((1, 2, 2), 3), torch.zeros(1, 2, 2, dtype=torch.uint8))


# --------------------------------------------------------------------------------------------
# Boundary
# --------------------------------------------------------------------------------------------
def test_dilation_follows_the_image_diagonal() -> None:
    assert boundary_dilation((480, 640)) == 16  # 0.02 * 800
    assert boundary_dilation((640, 640)) == 18  # 0.02 * 905.1
    assert boundary_dilation((2, 3)) == 1  # at least one pixel
    assert boundary_dilation((480, 640), 0.05) == 40


@pytest.mark.parametrize("backend", ["pool", "opencv"])
@pytest.mark.parametrize("hw", [(23, 31), (64, 48), (5, 90)])
def test_boundary_matches_reference_implementation(hw, backend) -> None:
    masks = random_blobs(np.random.default_rng(hw[0]), hw, 6)
    for ratio in (0.02, 0.06, 0.15):
        d = boundary_dilation(hw, ratio)
        ours = mask_boundary(torch.from_numpy(masks), d, backend).numpy()
        for k in range(len(masks)):
            np.testing.assert_array_equal(ours[k], ref_boundary(masks[k], ratio), err_msg=f"{hw} {ratio} #{k}")


@pytest.mark.parametrize("backend", ["pool", "opencv"])
def test_erosion_counts_the_image_border_as_background(backend) -> None:
    full = torch.ones(1, 12, 12, dtype=torch.bool)
    eroded = erode(full, 2, backend)[0].numpy()
    np.testing.assert_array_equal(eroded, square((12, 12), 2, 10, 2, 10))
    assert erode(torch.zeros(2, 0, 5, dtype=torch.bool), 2, backend).shape == (2, 0, 5)


def test_boundary_iou_matches_reference_and_crop_is_exact() -> None:
    hw = (60, 80)
    rng = np.random.default_rng(1)
    pred, gt = random_blobs(rng, hw, 5), random_blobs(rng, hw, 5)
    pred[4] = gt[4] = False  # empty pair: undefined
    d = boundary_dilation(hw)
    tp, tg = torch.from_numpy(pred), torch.from_numpy(gt)
    cropped = boundary_intersection_union(tp, tg, d, crop=True)
    for crop in (True, False):
        for backend in ("pool", "opencv"):
            other = boundary_intersection_union(tp, tg, d, crop=crop, backend=backend)
            assert torch.equal(cropped[0], other[0]) and torch.equal(cropped[1], other[1]), (crop, backend)
    got = iou(*cropped)
    for k in range(4):
        assert float(got[k]) == pytest.approx(ref_boundary_iou(pred[k], gt[k]), abs=1e-12)
    assert math.isnan(float(got[4]))


def test_perfect_prediction_scores_one_and_a_shift_hurts_the_boundary_more() -> None:
    hw = (100, 100)  # d = round(0.02 * 141.4) = 3
    gt = square(hw, 20, 80, 30, 70)
    shifted = square(hw, 20, 80, 31, 71)  # one pixel to the right
    tg = torch.from_numpy(gt)[None]
    perfect = iou(*boundary_intersection_union(tg, tg, boundary_dilation(hw)))
    assert float(perfect[0]) == 1.0
    ts = torch.from_numpy(shifted)[None]
    mask_iou = float(iou(*intersection_union(ts, tg))[0])
    b_iou = float(iou(*boundary_intersection_union(ts, tg, boundary_dilation(hw)))[0])
    assert mask_iou == pytest.approx(ref_iou(shifted, gt)) == pytest.approx(39 * 60 / (41 * 60))
    assert b_iou == pytest.approx(ref_boundary_iou(shifted, gt))
    assert (1.0 - b_iou) > 2 * (1.0 - mask_iou)


# --------------------------------------------------------------------------------------------
# COCO mask AP
# --------------------------------------------------------------------------------------------
def _gt(masks: list[np.ndarray], image_id: int = 1, first_id: int = 1) -> list[dict]:
    from pycocotools import mask as mask_utils

    anns = []
    for i, m in enumerate(masks):
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        anns.append({"id": first_id + i, "image_id": image_id, "segmentation": {**rle, "counts": rle["counts"].decode()},
                     "area": float(m.sum()), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
    return anns


def test_perfect_detections_score_ap_one() -> None:
    hw = (120, 160)
    small, large = square(hw, 5, 25, 5, 25), square(hw, 10, 115, 40, 150)  # 400 px and 11550 px
    images = [{"id": 1, "height": hw[0], "width": hw[1]}]
    dets = [detection(1, m, np.full(hw, 0.9, np.float32)) for m in (small, large)]
    ap = coco_mask_ap(images, _gt([small, large]), dets)
    assert set(ap) == set(AP_KEYS)
    for key in ("AP", "AP50", "AP75", "APs", "APl"):
        assert ap[key] == pytest.approx(1.0), key
    assert ap["APm"] is None  # no medium ground truth: undefined, not -1


def test_ap_of_a_half_matched_set_follows_the_definition() -> None:
    """Two 10x10 squares; detection A is perfect (score 0.9), detection B is shifted by two columns
    (IoU 80/120 = 0.667, score 0.8). At IoU thresholds 0.50..0.65 both match: AP 1. At 0.70..0.95
    only A matches: recall reaches 0.5 with precision 1, so 51 of the 101 recall points score 1."""
    hw = (40, 60)
    a, b = square(hw, 5, 15, 5, 15), square(hw, 20, 30, 30, 40)
    b_shifted = square(hw, 20, 30, 32, 42)
    images = [{"id": 1, "height": hw[0], "width": hw[1]}]
    dets = [detection(1, a, np.full(hw, 0.9, np.float32)), detection(1, b_shifted, np.full(hw, 0.8, np.float32))]
    ap = coco_mask_ap(images, _gt([a, b]), dets)
    per_threshold = [1.0 if t <= 80 / 120 else 51 / 101 for t in np.linspace(0.5, 0.95, 10)]
    assert ap["AP"] == pytest.approx(np.mean(per_threshold), abs=1e-9)
    assert ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == pytest.approx(51 / 101)
    assert ap["APs"] == pytest.approx(ap["AP"]) and ap["APm"] is None and ap["APl"] is None


def test_detection_score_is_the_mean_target_probability_inside_the_mask() -> None:
    mask = square((4, 4), 0, 2, 0, 2)
    prob = np.zeros((4, 4), np.float32)
    prob[0, 0], prob[0, 1], prob[1, 0], prob[1, 1], prob[3, 3] = 0.2, 0.4, 0.6, 0.8, 1.0
    det = detection(7, mask, prob)
    assert det["image_id"] == 7 and det["score"] == pytest.approx(0.5)
    assert detection(7, np.zeros((4, 4), bool), prob) is None


def test_no_detection_scores_zero_where_there_is_ground_truth() -> None:
    hw = (40, 60)
    ap = coco_mask_ap([{"id": 1, "height": hw[0], "width": hw[1]}], _gt([square(hw, 0, 10, 0, 10)]), [None])
    assert ap == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0, "APs": 0.0, "APm": None, "APl": None}
