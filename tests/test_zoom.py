"""Scale augmentation (data.zoom): image, masks and ROIs move together; zoomed views bypass the feature cache."""

import json
import math

import cv2
import numpy as np
import pytest

from helpers_train import make_person_data, tiny_overrides
from roiseg.data.dataset import ZOOM_PROBABILITY, CocoPersonImages, collate_images
from roiseg.data.prepare import prepare_coco
from roiseg.data.zoom import PAD_VALUE, zoom_image, zoom_masks, zoom_rois, zoom_window
from roiseg.synthetic.coco import write_synthetic_coco
from roiseg.training.config import load_config
from roiseg.training.engine import train

H0, W0 = 60, 80
OUT = (48, 64)


def person_image():
    """A grey image with one red rectangle 'person' over rows 20..39, columns 30..49 (its mask and box)."""
    img = np.full((H0, W0, 3), 90, np.uint8)
    img[20:40, 30:50] = (0, 0, 255)
    mask = np.zeros((1, H0, W0), bool)
    mask[0, 20:40, 30:50] = True
    roi = np.array([[30 / W0, 20 / H0, 50 / W0, 40 / H0]], np.float32)
    return img, mask, roi


def box_of(mask):
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("window", [(20.0, 10.0, 40.0, 30.0), (-20.0, -15.0, 120.0, 90.0), (0.0, 0.0, W0, H0)])
def test_image_masks_and_rois_move_together(window):
    img, mask, roi = person_image()
    out_img, out_mask = zoom_image(img, window, OUT), zoom_masks(mask, window, OUT)
    rois, keep = zoom_rois(roi, window, (H0, W0), OUT)
    assert out_img.shape == (*OUT, 3) and out_mask.shape == (1, *OUT) and keep.tolist() == [True]
    x0, y0, w, h = window
    expected = [(30 - x0) / w, (20 - y0) / h, (50 - x0) / w, (40 - y0) / h]  # the box by hand
    np.testing.assert_allclose(rois[0], expected, atol=1e-6)
    # The warped mask's pixel box is the ROI on the output grid (to a pixel), and the image is red under it.
    bx = box_of(out_mask[0])
    np.testing.assert_allclose(bx, [expected[0] * OUT[1], expected[1] * OUT[0], expected[2] * OUT[1],
                                    expected[3] * OUT[0]], atol=1.0)
    inner = cv2.erode(out_mask[0].astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                      borderValue=0).astype(bool)  # one pixel in from the mask's edge (bilinear blends there)
    assert (out_img[inner] == (0, 0, 255)).all()


def test_zoom_out_pads_with_grey_and_empty_masks():
    img, mask, _ = person_image()
    window = (-W0 / 2, -H0 / 2, 2.0 * W0, 2.0 * H0)  # the image in the output's centre quarter
    out_img, out_mask = zoom_image(img, window, OUT), zoom_masks(mask, window, OUT)
    assert (out_img[:OUT[0] // 4 - 1] == PAD_VALUE).all() and (out_img[:, -(OUT[1] // 4 - 1):] == PAD_VALUE).all()
    assert not out_mask[0, :OUT[0] // 4 - 1].any()
    centre = out_img[OUT[0] // 4 + 1: 3 * OUT[0] // 4 - 1, OUT[1] // 4 + 1: 3 * OUT[1] // 4 - 1]
    assert (centre != PAD_VALUE).any()


def test_full_window_is_a_resize():
    img = np.random.default_rng(0).integers(0, 255, (H0, W0, 3), dtype=np.uint8)
    resized = cv2.resize(img, (OUT[1], OUT[0]), interpolation=cv2.INTER_LINEAR).astype(int)
    assert np.abs(zoom_image(img, (0.0, 0.0, W0, H0), OUT).astype(int) - resized).max() <= 2


def test_rois_mostly_outside_are_dropped():
    rois = np.array([[0.1, 0.1, 0.4, 0.4], [0.0, 0.0, 0.2, 0.2], [0.3, 0.3, 0.9, 0.9]], np.float32)
    window = (0.15 * W0, 0.15 * H0, 0.5 * W0, 0.5 * H0)  # covers [0.15, 0.65] of both axes
    clipped, keep = zoom_rois(rois, window, (H0, W0), OUT)
    # Visible shares by hand: (0.25/0.3)^2 = 0.69, (0.05/0.2)^2 = 0.06, (0.35/0.6)^2 = 0.34.
    assert keep.tolist() == [True, False, True]
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0


def test_window_factor_range_and_position():
    rng = np.random.default_rng(5)
    factors = []
    for _ in range(300):
        x0, y0, w, h = zoom_window(rng, (H0, W0), 0.5)
        s = W0 / w
        assert 1 / 1.5 - 1e-9 <= s <= 1.5 + 1e-9 and math.isclose(H0 / h, s)
        if s >= 1:  # zoom in: the window lies in the image
            assert x0 >= -1e-9 and x0 + w <= W0 + 1e-9 and y0 >= -1e-9 and y0 + h <= H0 + 1e-9
        else:  # zoom out: the image lies in the window
            assert x0 <= 1e-9 and x0 + w >= W0 - 1e-9
        factors.append(s)
    assert min(factors) < 0.75 and max(factors) > 1.35  # both directions are drawn
    with pytest.raises(ValueError, match="zoom"):
        zoom_window(rng, (H0, W0), -0.1)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoom_ds")
    r = write_synthetic_coco(root, 12, 0, image_hw=(H0, W0), seed=4, persons=(2, 4))
    prepare_coco(r["annotations"]["train2017"], root / "annotations")
    return root / "annotations" / "instances_train2017_person_only_no_crowd.json", root / "images" / "train2017"


def target_box_matches_roi(roi, target, hw):
    """The TARGET pixels' box is the ROI on the grid, to 2 pixels (nearest-neighbour sampling may skip a thin
    limb: up to one output pixel when zooming out by up to 2x, plus the pixel-centre rule), on every side the
    window did not clip."""
    ys, xs = np.nonzero(target == 1)
    if not len(ys):
        return True
    got = np.array([xs.min() / hw[1], ys.min() / hw[0], (xs.max() + 1) / hw[1], (ys.max() + 1) / hw[0]])
    free = (roi > 1e-6) & (roi < 1 - 1e-6)  # a side clipped at the window's edge need not touch the person
    return bool((np.abs(got - roi)[free] <= 2.0 / np.array([hw[1], hw[0], hw[1], hw[0]])[free]).all())


@pytest.mark.parametrize("hflip", [0.0, 1.0])
def test_dataset_zooms_about_half_the_items_and_keeps_targets_consistent(coco, hflip):
    ann, images = coco
    plain = CocoPersonImages(ann, images, OUT, hflip=hflip)
    zoomed = CocoPersonImages(ann, images, OUT, zoom=1.0, seed=2, hflip=hflip, roi_copies=2)
    again = CocoPersonImages(ann, images, OUT, zoom=1.0, seed=2, hflip=hflip, roi_copies=2)
    again.set_epoch(1), again.set_epoch(0)
    flags = [zoomed[i].zoomed for i in range(len(zoomed))]
    assert flags == [again[i].zoomed for i in range(len(again))]  # deterministic per (seed, epoch, index)
    zoomed.set_epoch(1)
    assert flags != [zoomed[i].zoomed for i in range(len(zoomed))]  # re-drawn each epoch
    zoomed.set_epoch(0)
    assert 0 < sum(flags) < len(flags) and abs(sum(flags) / len(flags) - ZOOM_PROBABILITY) <= 0.35
    for i, z in enumerate(flags):
        a, b = plain[i], zoomed[i]
        assert b.flipped == bool(hflip)
        if not z:  # not drawn: the item as without zoom (each ROI twice)
            np.testing.assert_array_equal(a.image.numpy(), b.image.numpy())
            np.testing.assert_array_equal(np.tile(a.targets.numpy(), (2, 1, 1)), b.targets.numpy())
            continue
        assert len(b.rois) >= 2 and not np.array_equal(a.image.numpy(), b.image.numpy())
        kept = b.ann_ids.numpy()[: len(b.ann_ids) // 2]
        assert set(kept) <= set(a.ann_ids.numpy()) and list(kept) == sorted(kept, key=list(a.ann_ids.numpy()).index)
        np.testing.assert_array_equal(b.ann_ids.numpy(), np.tile(kept, 2))  # an ordered subset, tiled roi_copies times
        for roi, t in zip(b.rois.numpy(), b.targets.numpy()):
            assert target_box_matches_roi(roi, t, OUT), (i, roi)
    assert collate_images([zoomed[i] for i in range(len(zoomed))]).zoomed == flags
    with pytest.raises(ValueError, match="zoom"):
        CocoPersonImages(ann, images, OUT, zoom=-1.0)


def test_a_kept_roi_always_holds_an_input_pixel():
    rois = np.array([[0.5, 0.5, 0.51, 0.51], [0.1, 0.1, 0.6, 0.6]], np.float32)  # a 0.8 x 0.6 px person at 80 x 60
    window = (-2.0 * W0, -2.0 * H0, 5.0 * W0, 5.0 * H0)  # zoomed out 5x: the small box falls between pixel centres
    clipped, keep = zoom_rois(rois, window, (H0, W0), OUT)
    assert keep.tolist() == [False, True]


def test_training_extracts_zoomed_views_and_caches_only_plain_ones(tmp_path, stand_in_full):
    """The epoch's zoomed items miss the cache every time (their features are of the zoomed image), the others
    hit it from the second epoch on, and no zoomed view leaves a cache file."""
    data = make_person_data(tmp_path / "data", n_train=8, n_val=2)
    cfg = load_config(None, tiny_overrides(data, stand_in_full, tmp_path / "run", features__cache=str(tmp_path / "cache"),
                                           head__variant="detail", data__hflip=0.0, data__zoom=1.0, train__picture=False,
                                           data__crowded_repeat=1))  # every train image drawn once per epoch
    train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    ds = CocoPersonImages(cfg.data.train_annotations, cfg.data.train_image_dir, (128, 128), zoom=1.0, seed=cfg.train.seed)
    n_val = len(CocoPersonImages(cfg.data.val_annotations, cfg.data.val_image_dir, (128, 128)))
    views = {}
    for epoch in (1, 2):
        ds.set_epoch(epoch)
        views[epoch] = [ds[i].zoomed for i in range(len(ds))]
    assert 0 < sum(views[2]) < len(ds)
    # Epoch 2 misses: its zoomed views, and its plain views of images that epoch 1 showed zoomed (first time).
    first_plain = sum(z2 is False and z1 for z1, z2 in zip(views[1], views[2]))
    assert records[1]["feature_cache_misses"] == sum(views[2]) + first_plain
    assert records[1]["feature_cache_hits"] == sum(not z1 and not z2 for z1, z2 in zip(views[1], views[2])) + n_val
    plain_seen = sum(not (z1 and z2) for z1, z2 in zip(views[1], views[2]))
    assert len(list((tmp_path / "cache").rglob("*.np*"))) == plain_seen + n_val  # plain entries only
