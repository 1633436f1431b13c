"""Detection formats and the person post-processing: the Python reference and the ONNX graph agree
(stand-in in the Ultralytics format, yolox_nano's raw grid outputs, decoded YOLOX, YOLOv5's anchor-based
layout, the nms rows, Ultralytics end-to-end rows)."""

from __future__ import annotations

import numpy as np
import pytest

import graph_tools as gt
from roiseg.conventions import Preprocessing, preprocess, read_image
from roiseg.detection.formats import (
    DetectionSpec, Instances, InstanceParams, classes_of, detection_spec, grid_and_strides, guess_format,
)
from roiseg.detection.layouts import LAYOUTS
from roiseg.detection.reference import decode, reference_instances
from roiseg.detection.graph import postprocess_model
from roiseg.verify.instances import compare_instances
from roiseg.errors import InputError

YOLOX_PRE = Preprocessing(color="bgr", scale=1.0)
"""YOLOX's own input: BGR, 0..255 (its export has no normalisation)."""
PERSON_IMAGES = ("000000020992.jpg", "000000005001.jpg", "000000184324.jpg", "000000064523.jpg", "000000360960.jpg")
NO_PERSON_IMAGE = "000000454661.jpg"
"""A coco-tiny val image without persons; yolox_nano finds none above 0.25 in it."""
PARAMS = [
    InstanceParams(),
    InstanceParams(person_classes=(0, 2, 5), score_threshold=0.3, iou_threshold=0.5, max_instances=7),
    InstanceParams(score_threshold=0.05, iou_threshold=0.7, max_instances=3),
    InstanceParams(score_threshold=0.999),
]


def _raw(detector, image, pre, spec):
    session = gt.create_session(gt.load_model(detector))
    x = preprocess(read_image(image), spec.input_hw, pre)
    return session.run([spec.tensor], {session.get_inputs()[0].name: x})[0]


def _graph_instances(spec, params, raw) -> Instances:
    session = gt.create_session(postprocess_model(spec, params, 17, 8, input_shape=list(raw.shape)))
    return Instances(*session.run(None, {spec.tensor: raw}))


def _assert_same(got: Instances, ref: Instances, params: InstanceParams) -> None:
    cmp = compare_instances(got, ref)
    assert cmp["count"] == cmp["reference_count"]
    assert cmp["box_max_abs"] <= 1e-4 and cmp["score_max_abs"] <= 1e-6 and cmp["classes_equal"]
    assert len(got.scores) <= params.max_instances and (got.scores > params.score_threshold).all()
    assert np.isin(got.classes, params.person_classes).all() and got.classes.dtype == np.int64
    assert (np.diff(got.scores) <= 0).all() and ((got.boxes >= 0) & (got.boxes <= 1)).all()


@pytest.fixture(scope="module")
def stand_in_raws(stand_in_full, coco_tiny):
    spec = detection_spec(gt.load_model(stand_in_full))
    images = [coco_tiny / "images" / "val2017" / name for name in (*PERSON_IMAGES[:3], NO_PERSON_IMAGE)]
    return spec, [_raw(stand_in_full, p, Preprocessing(), spec) for p in images]


@pytest.fixture(scope="module")
def yolox_raws(yolox_nano, coco_tiny):
    spec = detection_spec(gt.load_model(yolox_nano))
    images = [coco_tiny / "images" / "val2017" / name for name in (*PERSON_IMAGES, NO_PERSON_IMAGE)]
    return spec, [_raw(yolox_nano, p, YOLOX_PRE, spec) for p in images]


def test_stand_in_has_an_ultralytics_output(stand_in_full, stand_in_raws):
    spec, raws = stand_in_raws
    model = gt.load_model(stand_in_full)
    assert (spec.tensor, spec.format, spec.num_classes, spec.input_hw) == ("output0", "ultralytics", 25, (128, 128))
    assert gt.read_props(model)["task"] == "detect" and "0: 'person'" in gt.read_props(model)["names"]
    raw = raws[0]
    assert raw.shape == (1, 29, spec.anchors())
    cxcy, wh, scores = raw[0, :2], raw[0, 2:4], raw[0, 4:]
    grid, stride = grid_and_strides(spec.input_hw)
    assert np.abs(cxcy.T - (grid + 0.5) * stride).max() <= stride.max() + 1e-4  # centre within a cell of its anchor
    assert ((wh.T >= stride - 1e-4) & (wh.T <= 9 * stride + 1e-4)).all()  # 1 to 9 cells, in input pixels
    assert ((scores > 0) & (scores < 1)).all()


def test_yolox_nano_output_is_raw_grid_with_sigmoid_scores(yolox_nano, yolox_raws):
    spec, raws = yolox_raws
    assert (spec.tensor, spec.format, spec.num_classes, spec.decoded, spec.activated) == ("output", "yolox", 80, False, True)
    raw = np.concatenate(raws, 1)[0]
    assert np.abs(raw[:, :4]).max() < 10  # grid offsets and log sizes, not pixels
    assert raw[:, 4:].min() >= 0 and raw[:, 4:].max() <= 1  # objectness and classes after the sigmoid


def test_yolox_decoding_finds_the_annotated_persons(yolox_raws, coco_tiny):
    """The raw-grid reading is the right one: the one person of 000000020992.jpg (whole image) is found."""
    spec, raws = yolox_raws
    found = reference_instances(raws[0], spec)
    assert len(found.scores) == 1 and found.scores[0] > 0.8
    np.testing.assert_allclose(found.boxes[0], [0.0, 0.0, 1.0, 1.0], atol=0.03)  # COCO bbox [0, 0, 500, 333]
    assert len(reference_instances(raws[1], spec).scores) >= 8  # 000000005001.jpg: 13 annotated persons


@pytest.mark.parametrize("params", PARAMS, ids=["default", "3classes_cap7", "cap3", "none"])
def test_onnx_postprocessing_equals_reference_on_stand_in(stand_in_raws, params):
    spec, raws = stand_in_raws
    counts = []
    for raw in raws:
        ref = reference_instances(raw, spec, params)
        _assert_same(_graph_instances(spec, params, raw), ref, params)
        counts.append(len(ref.scores))
    if params.score_threshold > 0.9:
        assert counts == [0] * len(raws)
    else:
        assert min(counts) > 0 and max(counts) <= params.max_instances


@pytest.mark.parametrize("params", PARAMS, ids=["default", "3classes_cap7", "cap3", "none"])
def test_onnx_postprocessing_equals_reference_on_yolox_nano(yolox_raws, params):
    spec, raws = yolox_raws
    for raw in raws:
        _assert_same(_graph_instances(spec, params, raw), reference_instances(raw, spec, params), params)


def test_no_person_image_gives_zero_instances(yolox_raws):
    spec, raws = yolox_raws
    got = _graph_instances(spec, InstanceParams(), raws[-1])
    assert got.boxes.shape == (0, 4) and got.scores.shape == (0,) and got.classes.shape == (0,)


def test_decoded_yolox_and_logits_give_the_same_instances(yolox_raws):
    """YOLOX exported with decode_in_inference (pixel cx, cy, w, h), and scores given as logits."""
    spec, raws = yolox_raws
    raw = raws[2]
    boxes, _ = decode(raw, spec)
    cxcywh = np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], 1)
    decoded = np.concatenate([cxcywh, raw[0, :, 4:]], 1)[None].astype(np.float32)
    eps = 1e-6
    logits = raw.copy()
    logits[..., 4:] = np.log(np.clip(raw[..., 4:], eps, 1 - eps) / np.clip(1 - raw[..., 4:], eps, 1))
    base = reference_instances(raw, spec)
    for variant, spec2 in ((decoded, DetectionSpec(**{**spec.__dict__, "decoded": True})),
                           (logits, DetectionSpec(**{**spec.__dict__, "activated": False}))):
        ref = reference_instances(variant, spec2)
        _assert_same(_graph_instances(spec2, InstanceParams(), variant), ref, InstanceParams())
        assert len(ref.scores) == len(base.scores)
        np.testing.assert_allclose(ref.boxes, base.boxes, atol=1e-4)


def test_nms_rows_format():
    spec = DetectionSpec("det", "nms", (320, 480), 0)
    rows = np.array([
        [0, 0, 0.90, 10, 20, 110, 220], [0, 2, 0.95, 0, 0, 50, 50], [0, 0, 0.20, 5, 5, 15, 15],
        [0, 0, 0.60, -10, 300, 200, 400], [0, 1, 0.70, 30, 30, 60, 60], [0, 0, 0.75, 100, 100, 200, 200],
    ], np.float32)
    for params in (InstanceParams(), InstanceParams((0, 1), 0.5, max_instances=2), InstanceParams(score_threshold=0.99)):
        ref = reference_instances(rows, spec, params)
        _assert_same(_graph_instances(spec, params, rows), ref, params)
    ref = reference_instances(rows, spec)
    np.testing.assert_array_equal(ref.scores, np.float32([0.90, 0.75, 0.60]))
    np.testing.assert_allclose(ref.boxes[0], [10 / 480, 20 / 320, 110 / 480, 220 / 320])
    np.testing.assert_allclose(ref.boxes[2], [0, 300 / 320, 200 / 480, 1])  # clipped
    empty = np.zeros((0, 7), np.float32)
    assert _graph_instances(spec, InstanceParams(), empty).boxes.shape == (0, 4)


def test_end2end_rows_format():
    """Ultralytics end-to-end rows x1, y1, x2, y2, score, class: filtered, sorted, capped, not suppressed."""
    spec = DetectionSpec("det", "end2end", (320, 480), 0)
    rows = np.array([[
        [10, 20, 110, 220, 0.90, 0], [0, 0, 50, 50, 0.95, 2], [5, 5, 15, 15, 0.20, 0],
        [-10, 300, 200, 400, 0.60, 0], [30, 30, 60, 60, 0.70, 1], [12, 22, 108, 218, 0.75, 0],
        [0, 0, 0, 0, 0.0, 0],  # padding row of a 300-row output
    ]], np.float32)
    for params in (InstanceParams(), InstanceParams((0, 1), 0.5, max_instances=2), InstanceParams(score_threshold=0.99)):
        ref = reference_instances(rows, spec, params)
        _assert_same(_graph_instances(spec, params, rows), ref, params)
    ref = reference_instances(rows, spec)
    np.testing.assert_array_equal(ref.scores, np.float32([0.90, 0.75, 0.60]))  # the overlapping 0.75 box stays
    np.testing.assert_allclose(ref.boxes[0], [10 / 480, 20 / 320, 110 / 480, 220 / 320])
    np.testing.assert_allclose(ref.boxes[2], [0, 300 / 320, 200 / 480, 1])  # clipped
    assert _graph_instances(spec, InstanceParams(), np.zeros((1, 0, 6), np.float32)).boxes.shape == (0, 4)


def test_stand_in_end2end_output(tmp_path):
    from roiseg.synthetic.detector import build_stand_in_detector

    path = build_stand_in_detector(tmp_path / "e2e.onnx", channels=64, input_hw=(128, 128), detections="end2end")
    spec = detection_spec(gt.load_model(path))
    assert (spec.tensor, spec.format, spec.num_classes) == ("output0", "end2end", 0)
    raw = gt.create_session(gt.load_model(path)).run(None, {"images": np.random.default_rng(0).random(
        (1, 3, 128, 128), np.float32)})[0]
    assert raw.shape == (1, 300, 6) and (np.diff(raw[0, :, 4]) <= 0).all()  # best first
    assert ((raw[0, :, 2:4] > raw[0, :, 0:2]) & (raw[0, :, 5:] == np.round(raw[0, :, 5:]))).all()
    present = tuple(int(c) for c in np.unique(raw[0, :, 5]))
    for params in (InstanceParams(present, 0.3), InstanceParams(present[:1], 0.1, max_instances=7)):
        ref = reference_instances(raw, spec, params)
        assert len(ref.scores) > 0
        _assert_same(_graph_instances(spec, params, raw), ref, params)


def test_stand_in_yolov5_output(tmp_path, coco_tiny):
    """YOLOv5/v7 layout: three decoded boxes per cell, objectness x class score, then NMS."""
    from roiseg.synthetic.detector import build_stand_in_detector

    path = build_stand_in_detector(tmp_path / "v5.onnx", channels=64, input_hw=(128, 128), detections="yolov5")
    spec = detection_spec(gt.load_model(path))
    assert (spec.tensor, spec.format, spec.num_classes, spec.decoded) == ("output0", "yolov5", 25, True)
    raws = [_raw(path, coco_tiny / "images" / "val2017" / name, Preprocessing(), spec) for name in PERSON_IMAGES[:2]]
    a = spec.anchors()
    assert raws[0].shape == (1, 3 * a, 30)
    np.testing.assert_allclose(raws[0][0, 2 * a:, 2:4], 4 * raws[0][0, :a, 2:4], rtol=1e-5)  # 2x vs 0.5x box
    for raw in raws:
        x1y1x2y2, scores = decode(raw, spec)
        np.testing.assert_allclose(scores.numpy(), raw[0, :, 4:5] * raw[0, :, 5:], rtol=1e-6)  # obj x class
        np.testing.assert_allclose(x1y1x2y2.numpy()[:, 2:] - x1y1x2y2.numpy()[:, :2], raw[0, :, 2:4], rtol=1e-4, atol=1e-4)
        for params in PARAMS[:3]:
            ref = reference_instances(raw, spec, params)
            _assert_same(_graph_instances(spec, params, raw), ref, params)


def test_format_from_shape_and_metadata():
    assert guess_format([1, 84, 8400], 8400, {}) == "ultralytics"
    assert guess_format([1, 8400, 85], 8400, {}) == "yolox"
    assert guess_format([1, 3549, 85], 3549, {}) == "yolox"
    assert guess_format(["num", 7], 8400, {}) == "nms"
    assert guess_format([1, "num", 7], 8400, {}) == "nms"
    assert guess_format([1, 300, 6], 8400, {}) == "end2end"
    assert guess_format([1, "num", 6], 8400, {}) == "end2end"
    assert classes_of(LAYOUTS["end2end"], ["batch", 300, 6], 8400, True, "output0") == 0  # a dynamic-batch export
    assert guess_format([1, 25200, 85], 8400, {}) == "yolov5"
    assert guess_format([1, 25200, 6], 8400, {}) == "yolov5"  # one class: three boxes per cell, not end2end rows
    assert guess_format([1, 300, 6], 8400, {"names": str({i: "x" for i in range(80)}), "task": "detect"}) == "end2end"
    assert guess_format([1, 3549, 6], 3549, {}) == "yolox"  # one class, one row per anchor
    assert guess_format([1, 29, 100], 336, {"names": str({i: "x" for i in range(25)}), "task": "detect"}) == "ultralytics"
    assert guess_format([1, 64, 52, 52], 3549, {}) is None
    assert guess_format([1, 30, 20], 3549, {}) is None


def test_detection_spec_errors(stand_in_featext, yolox_nano):
    featext = gt.load_model(stand_in_featext)
    assert detection_spec(featext).tensor == "output0"  # the taps do not look like detections
    with pytest.raises(InputError, match="unknown detection format"):
        detection_spec(featext, det_format="yolo")
    with pytest.raises(InputError, match="not in the yolox format"):
        detection_spec(featext, det_format="yolox")
    with pytest.raises(InputError, match="not in the nms format"):
        detection_spec(featext, det_format="nms")
    with pytest.raises(InputError, match="not in the yolov5 format"):
        detection_spec(featext, det_format="yolov5")
    with pytest.raises(InputError, match="only the yolox format has raw grid boxes"):
        detection_spec(featext, det_format="ultralytics", decoded=False)
    with pytest.raises(InputError, match="not in the end2end format"):
        detection_spec(featext, det_format="end2end")
    with pytest.raises(InputError, match="cannot tell the format"):
        detection_spec(featext, "/model.34/Concat_output_0")
    with pytest.raises(InputError, match="not found"):
        detection_spec(featext, "no_such_tensor")
    with pytest.raises(InputError, match="would hold 85 detections of 3545 classes: not that format"):
        detection_spec(gt.load_model(yolox_nano), det_format="ultralytics")  # YOLOX's [1, 3549, 85] read the wrong way
    spec = detection_spec(gt.load_model(yolox_nano))
    for bad, why in [(InstanceParams(person_classes=(80,)), "out of range"), (InstanceParams(person_classes=()), "distinct"),
                     (InstanceParams(score_threshold=1.0), "score threshold"), (InstanceParams(iou_threshold=1.5), "IoU"),
                     (InstanceParams(max_instances=0), "max instances")]:
        with pytest.raises(InputError, match=why):
            postprocess_model(spec, bad, 17, 8)
    with pytest.raises(InputError, match="opset >= 16"):
        postprocess_model(spec, InstanceParams(), 13, 8)
