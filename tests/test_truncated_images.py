"""Truncated or corrupt image files: detected when read (OpenCV alone decodes a JPEG cut in half as a
half-grey image), refused with the file name where one image is asked for, skipped with a warning
naming the file and counted in the epoch record during training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers_train import make_person_data, tiny_overrides

from roiseg.conventions import image_truncation, read_image
from roiseg.data.dataset import CocoPersonImages, SkippedImage, collate_images

IMAGE = "images/val2017/000000020992.jpg"


def _cut(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def test_read_image_refuses_truncated_jpeg_and_png(coco_tiny, tmp_path):
    src = coco_tiny / IMAGE
    assert read_image(src).shape[2] == 3 and image_truncation(src.read_bytes()) is None
    cut = _cut(src, tmp_path / "cut.jpg")
    assert cv2.imread(str(cut)) is not None  # what OpenCV alone does: no error
    with pytest.raises(ValueError, match=r"corrupt image: .*cut\.jpg \(truncated JPEG"):
        read_image(cut)
    png = tmp_path / "full.png"
    cv2.imwrite(str(png), np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    assert read_image(png).shape == (64, 64, 3)
    with pytest.raises(ValueError, match=r"cut\.png \(truncated PNG"):
        read_image(_cut(png, tmp_path / "cut.png"))
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match="garbage.jpg"):
        read_image(garbage)


def test_bytes_after_the_end_marker_are_accepted(coco_tiny, tmp_path):
    trailing = tmp_path / "trailing.jpg"
    trailing.write_bytes((coco_tiny / IMAGE).read_bytes() + b"\x00" * 32 + b"camera trailer")
    assert read_image(trailing).shape == read_image(coco_tiny / IMAGE).shape


def test_every_shared_image_reads(shared_dir):
    files = sorted((shared_dir / "coco-tiny" / "images").rglob("*.jpg"))
    assert len(files) == 160 and all(image_truncation(p.read_bytes()) is None for p in files)


@pytest.fixture()
def data_with_a_cut_image(tmp_path):
    root = make_person_data(tmp_path / "data", n_train=6, n_val=3)
    train = json.loads((root / "annotations" / "instances_train2017_person_only_no_crowd.json").read_text())
    victim = root / "images" / "train2017" / train["images"][1]["file_name"]
    _cut(victim, victim)
    val = json.loads((root / "annotations" / "instances_val2017_person_only_no_crowd.json").read_text())
    val_victim = root / "images" / "val2017" / val["images"][0]["file_name"]
    _cut(val_victim, val_victim)
    return root, victim, val_victim


def test_dataset_skips_a_cut_image_with_a_warning(data_with_a_cut_image):
    root, victim, _ = data_with_a_cut_image
    ds = CocoPersonImages(root / "annotations" / "instances_train2017_person_only_no_crowd.json",
                          root / "images" / "train2017", (64, 64))
    seen: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("roiseg.data.dataset").addHandler(handler)
    try:
        item = ds[1]
    finally:
        logging.getLogger("roiseg.data.dataset").removeHandler(handler)
    assert isinstance(item, SkippedImage) and item.path == str(victim)
    assert len(seen) == 1 and str(victim) in seen[0] and "truncated JPEG" in seen[0]
    assert not ds.readable(1) and ds.readable(0)
    batch = collate_images([ds[0], item, ds[2]])
    assert batch.indices == [0, 2] and batch.skipped == [str(victim)] and batch.images.shape[0] == 2
    empty = collate_images([item])
    assert empty.paths == [] and empty.skipped == [str(victim)] and len(empty.rois) == 0


def test_training_skips_and_counts_cut_images(data_with_a_cut_image, stand_in_full, tmp_path, capsys):
    from test_train_cli import run_train

    root, victim, val_victim = data_with_a_cut_image
    out = tmp_path / "run"
    # crowded_repeat 1: every train image drawn once per epoch, so the cut one is skipped (and counted) in each
    items = tiny_overrides(root, stand_in_full, out, train__epochs=2, data__batch_size=2, data__crowded_repeat=1)
    code, err = run_train(capsys, items)
    assert code == 0, err[-3000:]
    assert "skipping image id" in err and str(victim) in err and str(val_victim) in err and "truncated JPEG" in err
    assert "; skipped 1 unreadable train and 1 validation image(s)" in err  # the epoch log line
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["skipped_images"], r["val_skipped_images"]) for r in records] == [(1, 1), (1, 1)]
    assert records[-1]["train_rois"] > 0 and (out / "best.pth").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
