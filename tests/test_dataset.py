"""Per-image and per-ROI datasets on generated data: targets checked against an independent build."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from roiseg.conventions import preprocess
from roiseg.data.dataset import CocoPersonImages, SkippedImage, collate_images
from roiseg.data.prepare import prepare_coco
from roiseg.errors import InputError
from roiseg.synthetic.coco import write_synthetic_coco

INPUT_HW = (40, 56)  # not the original size (60 x 80) and not its aspect ratio


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn_dataset")
    r = write_synthetic_coco(root, 5, 0, image_hw=(60, 80), seed=11, persons=(2, 4))
    prepare_coco(r["annotations"]["train2017"], root / "annotations")
    return {"root": root, "original": root / "annotations" / "instances_train2017.json",
            "ann": root / "annotations" / "instances_train2017_person_only_no_crowd.json",
            "images": root / "images" / "train2017"}


def independent_masks(ann_path, index, input_hw):
    """(COCO, image record, annotations, their masks at ``input_hw`` by nearest neighbour) from pycocotools."""
    coco = COCO(str(ann_path))
    info = coco.dataset["images"][index]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))
    h, w = input_hw
    return coco, info, anns, [cv2.resize(coco.annToMask(a), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)
                              for a in anns]


def independent_item(ann_path, images_dir, index, input_hw):
    """Image tensor, ROIs and targets built directly from pycocotools + explicit pixel centres."""
    coco, info, anns, masks = independent_masks(ann_path, index, input_hw)
    h0, w0 = info["height"], info["width"]
    h, w = input_hw
    rois = np.array([[a["bbox"][0] / w0, a["bbox"][1] / h0, (a["bbox"][0] + a["bbox"][2]) / w0,
                      (a["bbox"][1] + a["bbox"][3]) / h0] for a in anns])
    cy, cx = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None]
    targets = []
    for k, roi in enumerate(rois):
        inside = (cx >= roi[0]) & (cx < roi[2]) & (cy >= roi[1]) & (cy < roi[3])
        others = np.any([m for j, m in enumerate(masks) if j != k], axis=0) if len(masks) > 1 else np.zeros((h, w), bool)
        t = np.zeros((h, w), np.uint8)
        t[others & inside] = 2
        t[masks[k] & inside] = 1
        targets.append(t)
    image = cv2.imread(str(images_dir / info["file_name"]))
    return image, rois, np.stack(targets), anns


def test_image_item_matches_independent_build(data):
    ds = CocoPersonImages(data["ann"], data["images"], INPUT_HW)
    assert len(ds) == 4  # 5 generated images, one with a crowd person dropped by prepare
    for i in range(len(ds)):
        item = ds[i]
        bgr, rois, targets, anns = independent_item(data["ann"], data["images"], i, INPUT_HW)
        assert item.index == i and item.orig_hw == (60, 80)
        assert item.image.shape == (3, *INPUT_HW) and item.image.dtype == torch.float32
        np.testing.assert_array_equal(item.image.numpy(), preprocess(bgr, INPUT_HW)[0])
        np.testing.assert_allclose(item.rois.numpy(), rois, atol=1e-6)
        assert item.targets.dtype == torch.uint8 and item.targets.shape == (len(anns), *INPUT_HW)
        np.testing.assert_array_equal(item.targets.numpy(), targets)
        assert item.ann_ids.tolist() == [a["id"] for a in anns]
        np.testing.assert_allclose(item.areas.numpy(), [a["area"] for a in anns])
    assert any((ds[i].targets == 2).any() for i in range(len(ds)))  # overlapping persons exist


def test_original_json_gives_the_same_items(data):
    prepared = CocoPersonImages(data["ann"], data["images"], INPUT_HW)
    original = CocoPersonImages(data["original"], data["images"], INPUT_HW)  # crowd image dropped on the fly
    assert [original.record(i) for i in range(len(original))] == [prepared.record(i) for i in range(len(prepared))]
    assert torch.equal(original[1].targets, prepared[1].targets)


def test_jitter_is_deterministic_per_epoch(data):
    ds = CocoPersonImages(data["ann"], data["images"], INPUT_HW, jitter=0.2, seed=7)
    plain = CocoPersonImages(data["ann"], data["images"], INPUT_HW)
    a = ds[0]
    assert torch.equal(ds[0].rois, a.rois)
    assert not torch.allclose(a.rois, plain[0].rois)
    ds.set_epoch(1)
    b = ds[0]
    assert not torch.equal(a.rois, b.rois)
    ds.set_epoch(0)
    assert torch.equal(ds[0].rois, a.rois)  # resumable: epoch 0 again gives the same boxes
    other_seed = CocoPersonImages(data["ann"], data["images"], INPUT_HW, jitter=0.2, seed=8)
    assert not torch.equal(other_seed[0].rois, a.rois)
    # targets follow the jittered boxes: nothing outside them
    h, w = INPUT_HW
    cy, cx = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None]
    for roi, t in zip(b.rois.numpy(), b.targets.numpy()):
        inside = (cx >= roi[0]) & (cx < roi[2]) & (cy >= roi[1]) & (cy < roi[3])
        assert inside.any() and not t[~inside].any()


def test_roi_copies_give_each_person_several_jittered_rois_with_its_own_target(data):
    one = CocoPersonImages(data["ann"], data["images"], INPUT_HW, jitter=0.2, seed=7)
    three = CocoPersonImages(data["ann"], data["images"], INPUT_HW, jitter=0.2, seed=7, roi_copies=3)
    for i in range(len(one)):
        a, b = one[i], three[i]
        k = len(a.rois)
        assert b.rois.shape == (3 * k, 4) and b.targets.shape == (3 * k, *INPUT_HW)
        assert b.ann_ids.tolist() == a.ann_ids.tolist() * 3
        copies = b.rois.reshape(3, k, 4)
        assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])
        # every copy's target: the same person's pixels (1) and the others' (2) inside that copy's box
        *_, masks = independent_masks(data["ann"], i, INPUT_HW)
        if b.flipped:
            masks = [m[:, ::-1] for m in masks]
        h, w = INPUT_HW
        cy, cx = (np.mgrid[0:h, 0:w] + 0.5) / np.array([h, w])[:, None, None]
        for m, (roi, t) in enumerate(zip(b.rois.numpy(), b.targets.numpy())):
            inside = (cx >= roi[0]) & (cx < roi[2]) & (cy >= roi[1]) & (cy < roi[3])
            own = masks[m % k]
            others = np.any([x for j, x in enumerate(masks) if j != m % k], axis=0) if k > 1 else np.zeros_like(own)
            want = np.where(own, 1, np.where(others, 2, 0)) * inside
            np.testing.assert_array_equal(t, want)
    with pytest.raises(ValueError, match="roi_copies"):
        CocoPersonImages(data["ann"], data["images"], INPUT_HW, roi_copies=0)


def test_collate_and_batch_to(data):
    ds = CocoPersonImages(data["ann"], data["images"], INPUT_HW)
    items = [ds[0], ds[2]]
    batch = collate_images(items)
    k0, k2 = len(items[0].rois), len(items[1].rois)
    assert batch.images.shape == (2, 3, *INPUT_HW)
    assert batch.rois.shape == (k0 + k2, 4) and batch.targets.shape == (k0 + k2, *INPUT_HW)
    assert batch.batch_idx.tolist() == [0] * k0 + [1] * k2
    assert batch.indices == [0, 2] and batch.image_ids == [items[0].image_id, items[1].image_id]
    assert torch.equal(batch.targets[k0:], items[1].targets)
    moved = batch.to("cpu")
    assert torch.equal(moved.rois, batch.rois) and moved.paths == batch.paths
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_images)
    assert sum(len(b.indices) for b in loader) == len(ds)
    with pytest.raises(ValueError):
        collate_images([])


def test_record_find_instance_masks_max_images(data):
    ds = CocoPersonImages(data["ann"], data["images"], INPUT_HW, max_images=2)
    assert len(ds) == 2
    rec = ds.record(1)
    assert set(rec) == {"id", "file_name", "path", "height", "width"}
    assert ds.find(rec["file_name"]) == 1 and ds.find("nope.jpg") is None
    masks, rois = ds.instance_masks(1)
    coco = COCO(str(data["ann"]))
    anns = coco.loadAnns(coco.getAnnIds(imgIds=rec["id"]))
    assert masks.shape == (len(anns), 60, 80) and masks.dtype == bool
    np.testing.assert_array_equal(masks, np.stack([coco.annToMask(a).astype(bool) for a in anns]))
    assert rois.shape == (len(anns), 4)


def test_missing_image_on_disk_names_file_and_id(data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    listed = json.loads(data["ann"].read_text())["images"]
    (images / listed[2]["file_name"]).unlink()
    with pytest.raises(InputError) as exc:
        CocoPersonImages(data["ann"], images, INPUT_HW)
    assert listed[2]["file_name"] in str(exc.value) and str(listed[2]["id"]) in str(exc.value)
    with pytest.raises(InputError, match="images folder not found"):
        CocoPersonImages(data["ann"], tmp_path / "absent", INPUT_HW)


def test_image_of_the_wrong_size_or_unreadable(data, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(data["images"], images)
    listed = json.loads(data["ann"].read_text())["images"]
    cv2.imwrite(str(images / listed[0]["file_name"]), np.zeros((10, 10, 3), np.uint8))
    (images / listed[1]["file_name"]).write_bytes(b"not a jpeg")
    ds = CocoPersonImages(data["ann"], images, INPUT_HW)
    with pytest.raises(InputError, match=f"image id {listed[0]['id']} is 10x10"):
        ds[0]
    # An unreadable file is skipped (warned, naming it and the image id), not a stop: see test_truncated_images.
    skipped = ds[1]
    assert isinstance(skipped, SkippedImage) and skipped.path.endswith(listed[1]["file_name"])
    assert "not a readable image" in skipped.reason
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_flip_mirrors_image_rois_and_targets_together(data):
    plain = CocoPersonImages(data["ann"], data["images"], INPUT_HW)
    flip = CocoPersonImages(data["ann"], data["images"], INPUT_HW, hflip=1.0)
    for i in range(len(plain)):
        a, b = plain[i], flip[i]
        assert not a.flipped and b.flipped
        np.testing.assert_allclose(b.image.numpy(), a.image.numpy()[:, :, ::-1], atol=1e-6)
        np.testing.assert_allclose(b.rois[:, [0, 2]].numpy(), 1.0 - a.rois[:, [2, 0]].numpy(), atol=1e-6)
        np.testing.assert_array_equal(b.rois[:, [1, 3]].numpy(), a.rois[:, [1, 3]].numpy())
        mirrored = a.targets.numpy()[:, :, ::-1]
        # Same classes up to pixels whose centre lies exactly on a box edge (half-open box rule).
        assert (b.targets.numpy() == mirrored).mean() > 0.99
        assert set(np.unique(b.targets.numpy())) == set(np.unique(mirrored))
    half = CocoPersonImages(data["ann"], data["images"], INPUT_HW, hflip=0.5, seed=3)
    draws = [[half[i].flipped for i in range(len(half))] for _ in range(2)]
    assert draws[0] == draws[1]  # deterministic per (seed, epoch, index)
    half.set_epoch(1)
    flips = [half[i].flipped for i in range(len(half))]
    assert collate_images([half[i] for i in range(len(half))]).flipped == flips


def test_crowded_images_are_those_with_overlapping_person_boxes(data):
    ds = CocoPersonImages(data["ann"], data["images"], INPUT_HW)
    coco = COCO(str(data["ann"]))
    expected = []
    for info in coco.dataset["images"][: len(ds)]:
        boxes = [a["bbox"] for a in coco.loadAnns(coco.getAnnIds(imgIds=info["id"]))]
        expected.append(any(min(a[0] + a[2], b[0] + b[2]) > max(a[0], b[0]) and min(a[1] + a[3], b[1] + b[3]) > max(a[1], b[1])
                            for j, a in enumerate(boxes) for b in boxes[j + 1:]))
    assert ds.crowded() == expected and any(expected)


def test_train_loader_enters_crowded_images_crowded_repeat_times_into_the_pool(tmp_path, caplog):
    """``data.crowded_repeat`` reaches the train sampler: crowded images N times, the others once; val unrepeated."""
    from roiseg.training.build import build_loaders
    from roiseg.training.config import load_config
    from roiseg.training.distributed import DistContext

    r = write_synthetic_coco(tmp_path, 8, 0, image_hw=(60, 80), seed=5, persons=(1, 3))
    prepare_coco(r["annotations"]["train2017"], tmp_path / "annotations")
    ann = tmp_path / "annotations" / "instances_train2017_person_only_no_crowd.json"
    ds = CocoPersonImages(ann, tmp_path / "images" / "train2017", INPUT_HW)
    crowded = ds.crowded()
    assert any(crowded) and not all(crowded)
    for n in (1, 2, 3):
        cfg = load_config(None, {"data.crowded_repeat": n, "data.num_workers": 0})
        caplog.clear()
        with caplog.at_level("INFO", logger="roiseg"):
            sampler, train_loader, val_loader = build_loaders(cfg, DistContext(), ds, ds)
        pool = sampler.repeats or [1] * len(ds)
        assert pool == [n if c else 1 for c in crowded]
        assert train_loader.sampler is sampler and val_loader.sampler.repeats == []
        logged = f"{sum(crowded)} of {len(ds)} images crowded" in caplog.text
        assert logged == (n > 1), caplog.text
