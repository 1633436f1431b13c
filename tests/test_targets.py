"""3-class ROI targets and mask decoding on hand-made masks (expected values written out by hand)."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from roiseg.data.coco import box_rle, decode_mask, decode_rle, resize_mask_nearest, segmentation_to_rle
from roiseg.data.targets import jitter_rois, roi_targets


def _rect(hw, y0, y1, x0, x1):
    m = np.zeros(hw, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _reference_targets(masks, roi, owner):
    """Independent per-pixel implementation of the target rule (pixel-centre inside test)."""
    k, h, w = masks.shape
    out = np.zeros((h, w), dtype=np.uint8)
    for r in range(h):
        for c in range(w):
            cx, cy = (c + 0.5) / w, (r + 0.5) / h
            if not (roi[0] <= cx < roi[2] and roi[1] <= cy < roi[3]):
                continue
            if masks[owner, r, c]:
                out[r, c] = 1
            elif any(masks[j, r, c] for j in range(k) if j != owner):
                out[r, c] = 2
    return out


def test_overlapping_persons_hand_written():
    hw = (6, 8)
    a = _rect(hw, 1, 5, 1, 4)  # person A: rows 1-4, cols 1-3
    b = _rect(hw, 2, 6, 3, 7)  # person B overlaps A at rows 2-4, col 3
    # ROI of A = A's box (cols 1-3, rows 1-4) in normalised coordinates
    t = roi_targets(np.stack([a, b]), np.array([[1 / 8, 1 / 6, 4 / 8, 5 / 6], [3 / 8, 2 / 6, 7 / 8, 1.0]]))
    expected_a = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0, 0, 0],  # the overlap pixel (col 3) belongs to A itself: own wins
            [0, 1, 1, 1, 0, 0, 0, 0],
            [0, 1, 1, 1, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
        ]
    )
    expected_b = np.array(
        [
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1, 1, 1, 0],  # col 3 is A's too, but B's own mask wins
            [0, 0, 0, 1, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 1, 1, 0],
            [0, 0, 0, 1, 1, 1, 1, 0],
        ]
    )
    assert t.dtype == np.uint8 and t.shape == (2, 6, 8)
    np.testing.assert_array_equal(t[0], expected_a)
    np.testing.assert_array_equal(t[1], expected_b)


def test_other_person_inside_roi_is_non_target_and_outside_is_background():
    hw = (5, 6)
    own = _rect(hw, 0, 5, 0, 2)  # cols 0-1
    other = _rect(hw, 0, 5, 2, 6)  # cols 2-5
    # ROI covers cols 0-3 (x in [0, 4/6)), rows 1-3
    t = roi_targets(np.stack([own, other]), np.array([[0.0, 0.2, 4 / 6, 0.8]]))[0]
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [1, 1, 2, 2, 0, 0],
            [1, 1, 2, 2, 0, 0],
            [1, 1, 2, 2, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ]
    )
    np.testing.assert_array_equal(t, expected)


def test_roi_at_image_border_and_beyond():
    hw = (4, 5)
    own = _rect(hw, 0, 4, 3, 5)  # touches the right border
    other = _rect(hw, 2, 4, 0, 4)
    # box reaches past the right/bottom border; it is cut at the image edge
    t = roi_targets(np.stack([own, other]), np.array([[0.55, 0.3, 1.2, 1.1]]))[0]
    expected = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 0, 0, 1, 1],  # row 1 centre 1.5/4 = 0.375 >= 0.3: inside; col 2 centre 0.5 < 0.55: outside
            [0, 0, 0, 1, 1],
            [0, 0, 0, 1, 1],
        ]
    )
    np.testing.assert_array_equal(t, expected)
    t2 = roi_targets(np.stack([own, other]), np.array([[0.45, 0.3, 1.2, 1.1]]))[0]
    np.testing.assert_array_equal(t2[2:, 2], [2, 2])  # col 2 centre 0.5 is now inside: other person


def test_random_masks_match_per_pixel_reference():
    rng = np.random.default_rng(3)
    masks = rng.random((4, 9, 11)) < 0.3
    rois = np.sort(rng.random((4, 2, 2)), axis=1).transpose(0, 2, 1).reshape(4, 4)[:, [0, 2, 1, 3]]
    owners = [0, 1, 1, 3]  # two ROIs for instance 1
    t = roi_targets(masks, rois, owners)
    for m in range(4):
        np.testing.assert_array_equal(t[m], _reference_targets(masks, rois[m], owners[m]))


def test_roi_targets_rejects_bad_shapes():
    with pytest.raises(ValueError):
        roi_targets(np.zeros((4, 4), bool), np.zeros((1, 4)))
    with pytest.raises(ValueError):
        roi_targets(np.zeros((2, 4, 4), bool), np.zeros((2, 4)), owners=[0])


# --------------------------------------------------------------------------------------------
# Decoding polygons and RLE
# --------------------------------------------------------------------------------------------
def test_person_split_into_several_polygons_is_their_union():
    hw = (8, 10)
    # two squares (pixel coordinates, corners on pixel edges): cols 1-3 rows 1-3 and cols 6-8 rows 4-6
    segm = [[1, 1, 4, 1, 4, 4, 1, 4], [6, 4, 9, 4, 9, 7, 6, 7]]
    m = decode_mask(segm, hw)
    expected = _rect(hw, 1, 4, 1, 4) | _rect(hw, 4, 7, 6, 9)
    np.testing.assert_array_equal(m, expected)
    # as a target: the ROI spans both parts, all of them are class 1
    roi = np.array([[1 / 10, 1 / 8, 9 / 10, 7 / 8]])
    t = roi_targets(m[None], roi)[0]
    assert (t[expected] == 1).all() and (t[~expected] == 0).all()


def _uncompressed_rle(mask):
    """Column-major run lengths starting with zeros, written independently of pycocotools."""
    flat = mask.T.reshape(-1)
    counts, current, run = [], False, 0
    for v in flat:
        if bool(v) == current:
            run += 1
        else:
            counts.append(run)
            current, run = bool(v), 1
    counts.append(run)
    return {"counts": counts, "size": list(mask.shape)}


def test_uncompressed_and_compressed_rle_decode_to_the_mask():
    hw = (7, 9)
    mask = _rect(hw, 2, 6, 1, 4) | _rect(hw, 0, 2, 6, 9)
    unc = _uncompressed_rle(mask)
    np.testing.assert_array_equal(decode_mask(unc, hw), mask)
    comp = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    as_json = {"size": comp["size"], "counts": comp["counts"].decode("ascii")}  # as stored in JSON
    np.testing.assert_array_equal(decode_mask(as_json, hw), mask)
    np.testing.assert_array_equal(decode_mask(comp, hw), mask)


def test_rle_with_wrong_size_and_bad_polygons_are_rejected():
    with pytest.raises(ValueError, match="annotation id 7"):
        segmentation_to_rle({"counts": [12], "size": [3, 4]}, (4, 3), ann_id=7)
    with pytest.raises(ValueError, match="odd"):
        segmentation_to_rle([[0, 0, 1, 1, 2]], (4, 4))
    with pytest.raises(ValueError, match="at least 3"):
        segmentation_to_rle([[0, 0, 3, 3]], (4, 4))  # pycocotools would read this as a box
    with pytest.raises(ValueError, match="numbers"):
        segmentation_to_rle([[0, 0, "a", 1, 2, 2]], (4, 4))
    with pytest.raises(ValueError):
        segmentation_to_rle("nope", (4, 4))
    assert not decode_mask([], (3, 3)).any()


def test_nearest_resize_repeats_pixels():
    mask = np.array([[1, 0], [0, 1]], dtype=bool)
    up = resize_mask_nearest(mask, (4, 4))
    np.testing.assert_array_equal(up, np.kron(mask, np.ones((2, 2), dtype=bool)))
    # decode at original resolution, then resize: same as resizing the decoded mask
    segm = [[0, 0, 1, 0, 1, 1, 0, 1]]
    np.testing.assert_array_equal(decode_mask(segm, (2, 2), (4, 4)), resize_mask_nearest(decode_mask(segm, (2, 2)), (4, 4)))


@pytest.mark.parametrize("xs,ys", [((0, 4), (0, 3)), ((2, 5), (1, 6)), ((0, 7), (0, 6)), ((3, 3), (1, 2)), ((6, 7), (5, 6))])
def test_box_rle_is_the_rectangle(xs, ys):
    m = decode_rle(box_rle(xs, ys, (6, 7)))
    np.testing.assert_array_equal(m, _rect((6, 7), ys[0], ys[1], xs[0], xs[1]))


# --------------------------------------------------------------------------------------------
# Jitter
# --------------------------------------------------------------------------------------------
def test_jitter_is_deterministic_bounded_and_never_empty():
    rois = np.array([[0.3, 0.3, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.9, 0.9, 0.905, 0.905]], dtype=np.float32)
    a = jitter_rois(rois, 0.2, np.random.default_rng(1), (64, 64))
    b = jitter_rois(rois, 0.2, np.random.default_rng(1), (64, 64))
    c = jitter_rois(rois, 0.2, np.random.default_rng(2), (64, 64))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a >= 0).all() and (a <= 1).all() and (a[:, 2:] > a[:, :2]).all()
    # first box is far from the border: size within [0.8, 1.2] x, centre moved by <= 0.2 x size
    size, new_size = rois[0, 2:] - rois[0, :2], a[0, 2:] - a[0, :2]
    assert ((new_size >= 0.8 * size - 1e-6) & (new_size <= 1.2 * size + 1e-6)).all()
    shift = np.abs((a[0, :2] + a[0, 2:]) / 2 - (rois[0, :2] + rois[0, 2:]) / 2)
    assert (shift <= 0.2 * size + 1e-6).all()
    # a jittered box always keeps at least one pixel centre (else the original box is used)
    tiny = np.array([[0.5, 0.5, 0.52, 0.52]], dtype=np.float32)  # covers the centre 0.5078 of pixel 32 on 64 px
    for seed in range(20):
        out = jitter_rois(tiny, 0.9, np.random.default_rng(seed), (64, 64))
        centres = (np.arange(64) + 0.5) / 64
        inside_x = ((centres >= out[0, 0]) & (centres < out[0, 2])).any()
        inside_y = ((centres >= out[0, 1]) & (centres < out[0, 3])).any()
        assert inside_x and inside_y
    np.testing.assert_array_equal(jitter_rois(rois, 0.0, np.random.default_rng(0), (8, 8)), rois)
    with pytest.raises(ValueError):
        jitter_rois(rois, -0.1, np.random.default_rng(0), (8, 8))
