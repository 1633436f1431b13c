"""roiseg.runtime.predict and ``roiseg predict``: pixel ROIs, clipping, metadata preprocessing, masks at the original size."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnx
import pytest
from helpers_graph import ort_session

from graph_tools import read_props, write_props
from roiseg.cli import main
from roiseg.conventions import BACKGROUND, TARGET, Preprocessing, preprocess
from roiseg.errors import InputError
from roiseg.runtime.predict import RoiPredictor, clip_rois, parse_roi, predict_image
from roiseg.runtime.session import to_original_size

IMAGE = "images/val2017/000000020992.jpg"


@pytest.fixture(scope="module")
def fused(roi_model):
    return roi_model


def test_parse_roi():
    assert parse_roi("10,20.5, 30,40") == (10.0, 20.5, 30.0, 40.0)
    for bad in ("10,20,30", "a,b,c,d", "1,2,3,4,5", "1,2,nan,4"):
        with pytest.raises(InputError, match="x1,y1,x2,y2"):
            parse_roi(bad)


def test_clip_rois_warns_and_refuses_empty_boxes():
    clipped, notes = clip_rois(np.array([[10, 20, 50, 60], [-5, 30, 120, 200]], np.float32), (100, 80))
    np.testing.assert_array_equal(clipped, [[10, 20, 50, 60], [0, 30, 80, 100]])
    assert len(notes) == 1 and notes[0].startswith("ROI #2") and "clipped to 0,30,80,100" in notes[0]  # numbered from 1
    with pytest.raises(InputError, match="ROI #1 .* is empty"):
        clip_rois(np.array([[10, 10, 10, 50]], np.float32), (100, 80))
    with pytest.raises(InputError, match="outside the 80x100 image"):
        clip_rois(np.array([[90, 10, 120, 50]], np.float32), (100, 80))


def test_masks_go_back_to_the_original_size():
    probs = np.zeros((1, 3, 32, 32), np.float32)
    probs[:, BACKGROUND] = 1.0
    probs[0, :, 8:24, 8:16] = np.array([0.05, 0.9, 0.05], np.float32)[:, None, None]
    full, labels = to_original_size(probs, (64, 48))
    assert full.shape == (1, 3, 64, 48) and labels.shape == (1, 64, 48) and labels.dtype == np.uint8
    np.testing.assert_allclose(full.sum(1), 1.0, atol=1e-5)
    # The block covers rows 16..48 and columns 12..24 at the original size (scale 2 and 1.5).
    assert np.all(labels[0, 18:46, 14:22] == TARGET)
    assert np.all(labels[0, :14] == BACKGROUND) and np.all(labels[0, :, 26:] == BACKGROUND)


def test_predict_image_end_to_end(fused, coco_tiny, tmp_path):
    image = coco_tiny / IMAGE
    bgr = cv2.imread(str(image))
    h0, w0 = bgr.shape[:2]
    rois = [[60.0, 40.0, 300.0, 320.0], [200.0, -30.0, w0 + 50.0, 200.0]]
    pred, written = predict_image(fused, image, rois, out=tmp_path / "overlay.png", masks_dir=tmp_path / "masks")
    assert pred.labels.shape == (2, h0, w0) and pred.probs.shape == (2, 3, h0, w0)
    assert len(pred.warnings) == 1 and "ROI #2" in pred.warnings[0]
    np.testing.assert_array_equal(pred.rois_px[1], [200, 0, w0, 200])
    # Independent path: the session by hand on the same normalised boxes, each class resized on its own.
    meta_hw = tuple(json.loads(read_props(onnx.load(str(fused)))["roiseg.input_hw"]))
    norm = (pred.rois_px / np.array([w0, h0, w0, h0], np.float32)).astype(np.float32)
    raw = ort_session(fused).run(None, {"images": preprocess(bgr, meta_hw), "rois": norm})[0]
    resized = np.stack([[cv2.resize(raw[n, c], (w0, h0), interpolation=cv2.INTER_LINEAR) for c in range(3)]
                        for n in range(2)])
    np.testing.assert_allclose(pred.probs, resized, atol=1e-6)
    np.testing.assert_array_equal(pred.labels, resized.argmax(1))
    # Far outside ROI #1 everything is background.
    assert np.all(pred.labels[0, :, 310:] == BACKGROUND) and np.all(pred.labels[0, :30] == BACKGROUND)
    overlay = cv2.imread(str(tmp_path / "overlay.png"))
    assert overlay.shape == bgr.shape and not np.array_equal(overlay, bgr)
    names = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert names == [f"000000020992_roi{i}_{k}.png" for i in (1, 2) for k in ("classes", "target")]
    classes = cv2.imread(str(tmp_path / "masks" / "000000020992_roi1_classes.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(classes, pred.labels[0])
    target = cv2.imread(str(tmp_path / "masks" / "000000020992_roi1_target.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(target, np.where(pred.labels[0] == TARGET, 255, 0))
    assert len(written) == 5


def test_predict_applies_the_preprocessing_recorded_in_the_model(fused, coco_tiny, tmp_path):
    model = onnx.load(str(fused))
    props = read_props(model)
    bgr_pre = Preprocessing(color="bgr")
    props["roiseg.preprocessing"] = bgr_pre.to_json()
    write_props(model, props)
    bgr_model = tmp_path / "bgr.onnx"
    onnx.save(model, str(bgr_model))
    image = cv2.imread(str(coco_tiny / IMAGE))
    rois = np.array([[50, 50, 250, 300]], np.float32)
    got = RoiPredictor(bgr_model, device="cpu").predict(image, rois)
    hw = tuple(json.loads(props["roiseg.input_hw"]))
    norm = rois / np.array([image.shape[1], image.shape[0]] * 2, np.float32)
    want = ort_session(bgr_model).run(None, {"images": preprocess(image, hw, bgr_pre), "rois": norm})[0]
    want_full, _ = to_original_size(want, image.shape[:2])
    np.testing.assert_allclose(got.probs, want_full, atol=1e-6)
    rgb = RoiPredictor(fused, device="cpu").predict(image, rois)
    assert np.abs(rgb.probs - got.probs).max() > 1e-3  # the colour order really changed the input


@pytest.mark.parametrize("roi, expected", [("10,10,10,50", "is empty"), ("9000,10,9100,50", "lies outside")])
def test_predict_cli_refuses_bad_rois_and_writes_nothing(roi, expected, fused, coco_tiny, tmp_path, capsys):
    out = tmp_path / "overlay.png"
    code = main(["predict", "--model", str(fused), "--image", str(coco_tiny / IMAGE), "--roi", roi, "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and expected in errors[0]
    assert not out.exists()


def test_predict_cli_refuses_a_model_that_is_not_fused(yolox_nano, coco_tiny, tmp_path, capsys):
    out = tmp_path / "overlay.png"
    code = main(["predict", "--model", str(yolox_nano), "--image", str(coco_tiny / IMAGE), "--roi", "1,1,50,50",
                 "--out", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "not a roiseg fused model" in errors[0]
    assert not out.exists()


def test_predict_cli_prints_and_writes(fused, coco_tiny, tmp_path, capsys):
    out = tmp_path / "o.jpg"
    assert main(["predict", "--model", str(fused), "--image", str(coco_tiny / IMAGE), "--roi", "20,20,200,300",
                 "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "#1 box 20,20,200,300" in printed and f"wrote {out}" in printed
    assert cv2.imread(str(out)) is not None  # a real JPEG, named .jpg


def test_predict_instance_model_draws_every_person(instance_model, coco_tiny, tmp_path, capsys):
    image = coco_tiny / "images/val2017/000000005001.jpg"
    out, masks = tmp_path / "persons.png", tmp_path / "masks"
    assert main(["predict", "--model", str(instance_model), "--image", str(image), "--out", str(out),
                 "--save-masks", str(masks), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    bgr = cv2.imread(str(image))
    h0, w0 = bgr.shape[:2]
    boxes, scores, classes, probs = ort_session(instance_model).run(
        None, {"images": preprocess(bgr, (416, 416), Preprocessing(color="bgr", scale=1.0))})
    k = len(scores)
    assert k >= 8 and f"{k} person(s) detected on {image} ({w0}x{h0})" in printed
    first = ",".join(f"{v:.1f}" for v in boxes[0] * np.float32([w0, h0, w0, h0]))
    assert f"#1 score {scores[0]:.3f} class 0 box {first}:" in printed and f"#{k} score" in printed
    from roiseg.runtime.instances import InstancePredictor

    pred = InstancePredictor(instance_model, "cpu").predict(bgr)
    full, labels = to_original_size(probs, (h0, w0))
    np.testing.assert_allclose(pred.probs, full, atol=1e-6)
    np.testing.assert_array_equal(pred.labels, labels)
    names = {p.name for p in masks.iterdir()}
    assert len(names) == 2 * k and {f"000000005001_person{i}_{w}.png" for i in (1, k) for w in ("classes", "target")} <= names
    assert cv2.imread(str(out)).shape == bgr.shape


def test_predict_instance_model_without_persons_and_wrong_rois(instance_model, fused, coco_tiny, tmp_path, capsys):
    empty = coco_tiny / "images/val2017/000000454661.jpg"
    assert main(["predict", "--model", str(instance_model), "--image", str(empty), "--out", str(tmp_path / "e.png")]) == 0
    assert f"no person detected on {empty}" in capsys.readouterr().out
    assert main(["predict", "--model", str(instance_model), "--image", str(empty), "--roi", "1,1,50,50",
                 "--out", str(tmp_path / "r.png")]) == 2
    assert "finds the persons itself" in capsys.readouterr().err and not (tmp_path / "r.png").exists()
    assert main(["predict", "--model", str(fused), "--image", str(empty), "--out", str(tmp_path / "r.png")]) == 2
    assert "give at least one --roi" in capsys.readouterr().err and not (tmp_path / "r.png").exists()
