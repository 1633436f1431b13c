"""``roiseg fuse --image-input raw``: the original uint8 BGR image in, masks at its size out.

The in-graph preprocessing against ``roiseg.conventions.preprocess`` on real images (tolerance: one
grey level, 1/255), the fused raw model's contract and parity, and ``predict`` with such a model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers_graph import ort_session

from roiseg.cli import main
from roiseg.conventions import DEFAULT_PREPROCESSING, preprocess, read_image
from roiseg.runtime.metadata import read_metadata
from roiseg.verify.parity import format_table, run_parity
from roiseg.export.raw_input import preprocessing_model
from roiseg.verify.tolerances import RAW_PREPROCESS_ATOL

VAL_IMAGES = "images/val2017"


def _real_images(coco_tiny, n: int = 3) -> list[np.ndarray]:
    files = sorted((coco_tiny / VAL_IMAGES).glob("*.jpg"))[:n]
    assert files, "coco-tiny val images are needed"
    return [read_image(f) for f in files]


@pytest.mark.parametrize("input_hw", [(416, 416), (128, 192)])
def test_in_graph_preprocessing_matches_python_on_real_images(coco_tiny, input_hw):
    sess = ort_session(preprocessing_model(input_hw, DEFAULT_PREPROCESSING, 17, 8))
    for img in _real_images(coco_tiny):
        ref = preprocess(img, input_hw)
        got = sess.run(None, {"image": img})[0]
        assert got.shape == ref.shape == (1, 3, *input_hw) and got.dtype == np.float32
        diff = np.abs(got - ref)
        assert diff.max() <= RAW_PREPROCESS_ATOL  # at most one grey level (OpenCV resizes in fixed point)
        assert (diff > 1e-6).mean() < 0.2 and diff.mean() < 1e-3
    same = _real_images(coco_tiny, 1)[0]  # already at the input size: no resize on either side, exact
    exact = ort_session(preprocessing_model(same.shape[:2], DEFAULT_PREPROCESSING, 17, 8)).run(None, {"image": same})[0]
    assert np.array_equal(exact, preprocess(same, same.shape[:2]))


@pytest.fixture(scope="module")
def raw_model(tmp_path_factory, stand_in_full, stand_in_checkpoint):
    work = tmp_path_factory.mktemp("raw")
    ckpt = stand_in_checkpoint
    out = work / "raw.onnx"
    assert main(["fuse", "--yolo", str(stand_in_full), "--head", str(ckpt), "--out", str(out),
                 "--image-input", "raw", "--outputs", "probs", "labels"]) == 0
    return out, ckpt, work


def test_raw_model_contract(raw_model, coco_tiny):
    path, _, _ = raw_model
    model = onnx.load(str(path))
    ins = [(i.name, i.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
           for i in model.graph.input]
    assert ins == [("image", onnx.TensorProto.UINT8, ["height", "width", 3]), ("rois", onnx.TensorProto.FLOAT, ["num_rois", 4])]
    assert read_metadata(path).image_input == "raw"
    sess = ort_session(path)
    img = _real_images(coco_tiny, 1)[0]
    rois = np.array([[0.1, 0.1, 0.5, 0.9], [0.3, 0.2, 0.8, 0.7]], np.float32)
    masks, labels = sess.run(None, {"image": img, "rois": rois})
    assert masks.shape == (2, 3, *img.shape[:2]) and labels.shape == (2, *img.shape[:2])
    assert np.array_equal(labels, masks.argmax(1))
    small = np.ascontiguousarray(img[::3, ::2])
    assert sess.run(None, {"image": small, "rois": rois})[0].shape == (2, 3, *small.shape[:2])
    assert sess.run(None, {"image": img, "rois": np.zeros((0, 4), np.float32)})[0].shape == (0, 3, *img.shape[:2])


@pytest.mark.slow
def test_raw_model_parity_on_real_images(raw_model, stand_in_full, coco_tiny):
    path, ckpt, _ = raw_model
    report = run_parity(stand_in_full, ckpt, fused=path, annotations=coco_tiny / "annotations/instances_val2017.json",
                        images=coco_tiny / VAL_IMAGES, max_images=2, large_set=0)
    st = report["stages"]
    assert report["passed"], format_table(report)
    assert st["preprocess"]["passed"] and st["preprocess"]["max_abs"] <= RAW_PREPROCESS_ATOL
    assert st["fused"]["max_abs"] <= 1e-4 and st["labels"]["argmax_agreement"] >= 0.9999
    assert "preprocess" in format_table(report)


def test_predict_with_a_raw_model(raw_model, coco_tiny):
    from roiseg.runtime.predict import RoiPredictor

    path, _, _ = raw_model
    img = _real_images(coco_tiny, 1)[0]
    pred = RoiPredictor(path, device="cpu").predict(img, np.array([[20, 30, 200, 300]], np.float32))
    assert pred.probs.shape == (1, 3, *img.shape[:2]) and pred.labels.shape == (1, *img.shape[:2])


def test_fuse_refuses_an_unknown_image_input(raw_model, stand_in_full, capsys):
    _, ckpt, work = raw_model
    out = work / "bad.onnx"
    code = main(["fuse", "--yolo", str(stand_in_full), "--head", str(ckpt), "--out", str(out), "--image-input", "bgr"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and not out.exists()
    assert err == ["error: unknown image input 'bgr'; expected one of tensor, raw"]
