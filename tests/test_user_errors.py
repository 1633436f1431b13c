"""User errors that used to exit 0 with a wrong result, exit 3 with a traceback-like line, or leave half
results: each now exits 2 with one ``error:`` line naming the file or field, and leaves no partial output."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from roiseg.cli import main

IMAGE = "images/val2017/000000020992.jpg"


def _one_error(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    assert "Traceback" not in err and "run with --debug" not in err  # a user error, not an unexpected failure
    for f in fragments:
        assert str(f) in errors[0], errors[0]
    return errors[0]


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden temporary files included)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("user_errors")


@pytest.fixture(scope="module")
def ckpt(featext_checkpoint) -> Path:
    return featext_checkpoint


@pytest.fixture(scope="module")
def fused(roi_model) -> Path:
    return roi_model


@pytest.fixture(scope="module")
def truncated_jpeg(work, coco_tiny) -> Path:
    """A real JPEG cut in half (OpenCV decodes it as a half-grey image without an error)."""
    data = (coco_tiny / IMAGE).read_bytes()
    path = work / "corrupt" / "cut_in_half.jpg"
    path.parent.mkdir()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------------
# 1. Wrong results that exited 0
# --------------------------------------------------------------------------------------------
def test_analyze_on_a_set_without_rois_stops(tmp_path, capsys):
    src = tmp_path / "no_persons.json"
    src.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
                               "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    out = tmp_path / "out" / "data_analyze.json"
    code = main(["analyze", "--annotations", str(src), "--out", str(out), "--workers", "1"])
    _one_error(code, capsys.readouterr().err, "no_persons.json", "no person ROI", "no_person 1")
    assert not out.parent.exists()


def test_prepare_coco_without_persons_stops(tmp_path, capsys):
    src = tmp_path / "instances_train2017.json"
    src.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "iscrowd": 0, "bbox": [1, 1, 4, 4], "area": 16,
                         "segmentation": [[1, 1, 5, 1, 5, 5]]}],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}))
    out = tmp_path / "out"
    code = main(["prepare-coco", "--instances", str(src), "--out-dir", str(out), "--subset", "1"])
    _one_error(code, capsys.readouterr().err, "instances_train2017.json", "no image with a usable person", "category_id 1")
    assert not out.exists()


def test_predict_on_a_truncated_jpeg_stops(fused, truncated_jpeg, tmp_path, capsys):
    out = tmp_path / "overlay.png"
    code = main(["predict", "--model", str(fused), "--image", str(truncated_jpeg), "--roi", "10,10,100,100",
                 "--out", str(out)])
    _one_error(code, capsys.readouterr().err, str(truncated_jpeg), "truncated JPEG")
    assert _files(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 2. Exit 3 where a user error deserves exit 2
# --------------------------------------------------------------------------------------------
def test_analyze_out_is_a_folder(coco_tiny, tmp_path, capsys):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    code = main(["analyze", "--annotations", str(coco_tiny / "annotations/instances_val2017.json"), "--out", str(folder)])
    _one_error(code, capsys.readouterr().err, str(folder), "is a folder")
    assert _files(tmp_path) == []


def test_fuse_out_is_a_folder(stand_in_featext, ckpt, tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    code = main(["fuse", "--yolo", str(stand_in_featext), "--head", str(ckpt), "--out", str(folder)])
    _one_error(code, capsys.readouterr().err, str(folder), "is a folder")
    assert _files(tmp_path) == []


def test_fuse_check_image_corrupt(stand_in_featext, ckpt, truncated_jpeg, tmp_path, capsys):
    out = tmp_path / "fused.onnx"
    code = main(["fuse", "--yolo", str(stand_in_featext), "--head", str(ckpt), "--out", str(out),
                 "--check-image", str(truncated_jpeg)])
    _one_error(code, capsys.readouterr().err, str(truncated_jpeg), "corrupt image")
    assert _files(tmp_path) == []


def test_parity_check_on_a_corrupt_image(stand_in_featext, ckpt, truncated_jpeg, tmp_path, capsys):
    report = tmp_path / "parity.json"
    code = main(["parity-check", "--yolo", str(stand_in_featext), "--head", str(ckpt),
                 "--images", str(truncated_jpeg.parent), "--report", str(report)])
    _one_error(code, capsys.readouterr().err, str(truncated_jpeg), "corrupt image")
    assert _files(tmp_path) == []


def test_parity_check_max_images_zero_is_a_usage_error(stand_in_featext, ckpt, coco_tiny, tmp_path, capsys):
    report = tmp_path / "parity.json"
    code = main(["parity-check", "--yolo", str(stand_in_featext), "--head", str(ckpt), "--images",
                 str(coco_tiny / "images/val2017"), "--max-images", "0", "--report", str(report)])
    error = _one_error(code, capsys.readouterr().err, "--max-images", ">= 1")
    assert "parity outside tolerance" not in error
    assert _files(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 3. Half results
# --------------------------------------------------------------------------------------------
def test_predict_save_masks_is_a_file_writes_nothing(fused, coco_tiny, tmp_path, capsys):
    not_a_folder = tmp_path / "masks.png"
    not_a_folder.write_bytes(b"a file")
    out = tmp_path / "overlay.png"
    code = main(["predict", "--model", str(fused), "--image", str(coco_tiny / IMAGE), "--roi", "10,10,100,100",
                 "--out", str(out), "--save-masks", str(not_a_folder)])
    _one_error(code, capsys.readouterr().err, str(not_a_folder), "is a file")
    assert _files(tmp_path) == ["masks.png"] and not_a_folder.read_bytes() == b"a file"


def test_predict_out_is_a_folder_writes_no_masks(fused, coco_tiny, tmp_path, capsys):
    folder = tmp_path / "overlay"
    folder.mkdir()
    code = main(["predict", "--model", str(fused), "--image", str(coco_tiny / IMAGE), "--roi", "10,10,100,100",
                 "--out", str(folder), "--save-masks", str(tmp_path / "masks")])
    _one_error(code, capsys.readouterr().err, str(folder), "is a folder")
    assert _files(tmp_path) == [] and not (tmp_path / "masks").exists()


def test_train_early_failure_leaves_no_out_folder(tmp_path, stand_in_full, capsys):
    from helpers_train import make_person_data, tiny_overrides
    from test_train_cli import run_train

    data = make_person_data(tmp_path / "data", n_train=3, n_val=2)
    out = tmp_path / "run"
    items = tiny_overrides(data, tmp_path / "absent.onnx", out)
    code, err = run_train(capsys, items)
    _one_error(code, err, "absent.onnx", "not found")
    assert not out.exists()
    # a later input error (the val images) is found after the extractor was built: still no folder
    images = tmp_path / "val_images"
    shutil.copytree(data / "images" / "val2017", images)
    val = json.loads((data / "annotations" / "instances_val2017_person_only_no_crowd.json").read_text())
    (images / val["images"][0]["file_name"]).unlink()
    code, err = run_train(capsys, tiny_overrides(data, stand_in_full, out), "--val-images", str(images))
    _one_error(code, err, "not on disk")
    assert not out.exists()
