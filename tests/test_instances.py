"""The instance model (image -> boxes, scores, classes, masks): built from the one pipeline, detector
once (twice with a detector preprocessing of its own), parity with the Python reference and with the
ROI model on real coco-tiny images; raw-image input (boxes in pixels), float16; ``fuse --instances``.

The YOLOX-nano models of the default path (tensor and raw-image input, float16) are simplified as ``fuse``
writes them; the others, and the ROI models the parity compares with, are not (simplification is tested
by test_parity and test_simplify; onnxslim on a YOLOX-nano fuse costs ~1.4 s)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import graph_tools as gt
from helpers_graph import YOLOX_PRE, YOLOX_TENSOR, fused_once, make_checkpoint
from roiseg.conventions import Preprocessing, preprocess, read_image
from roiseg.detection.formats import InstanceParams, Instances
from roiseg.export.instances import build_instances, fuse_instances, instance_notes
from roiseg.runtime.metadata import KEY_INSTANCES, read_metadata
from roiseg.verify.instances import instance_parity
from roiseg.verify.parity import failure_summary, format_table
from roiseg.errors import InputError

PERSON_IMAGES = ("000000020992.jpg", "000000005001.jpg", "000000184324.jpg", "000000360960.jpg")
NO_PERSON_IMAGE = "000000454661.jpg"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("instances")


@pytest.fixture(scope="module")
def stand_in_ckpt(stand_in_checkpoint):
    return stand_in_checkpoint


@pytest.fixture(scope="module")
def yolox_ckpt(yolox_checkpoint):
    return yolox_checkpoint


def _images(coco_tiny, names):
    return [coco_tiny / "images" / "val2017" / n for n in names]


@pytest.fixture(scope="module")
def yolox_instances(work, yolox_nano, yolox_ckpt, coco_tiny):
    out = work / "yolox_instances.onnx"
    return fuse_instances(yolox_nano, yolox_ckpt, out, check_images=_images(coco_tiny, PERSON_IMAGES[:1])).out


def test_stand_in_instance_model_contract_and_parity(work, stand_in_full, stand_in_ckpt, coco_tiny):
    params = InstanceParams(score_threshold=0.5, iou_threshold=0.5, max_instances=12)
    report = fuse_instances(stand_in_full, stand_in_ckpt, work / "stand_in_instances.onnx", params=params, simplify=False)
    model = gt.load_model(report.out)
    assert report.inputs == [("images", [1, 3, 128, 128])]
    assert report.outputs == [("boxes", ["num_instances", 4]), ("scores", ["num_instances"]),
                              ("classes", ["num_instances"]), ("masks", ["num_instances", 3, 128, 128])]
    spec, got_params, det_pre = read_metadata(model).instances
    assert (spec.tensor, spec.format, got_params, det_pre) == ("output0", "ultralytics", params, None)
    props = gt.read_props(model)
    assert props["roiseg.feature_tensor"] == "/model.34/Concat_output_0" and KEY_INSTANCES in props
    # the detector runs once: as many convolutions as the detector plus the head
    head_convs = len([n for n in gt.nodes_of_type(model, "Conv") if "roiseg_head" in n.name])
    assert len(gt.nodes_of_type(model, "Conv")) - head_convs == len(gt.nodes_of_type(gt.load_model(stand_in_full), "Conv"))
    roi_model = fused_once(work, stand_in_full, stand_in_ckpt, simplify=False)
    result = instance_parity(model, stand_in_full, roi_model, _images(coco_tiny, (*PERSON_IMAGES[:2], NO_PERSON_IMAGE)))
    assert result["passed"], json.dumps(result, indent=1)
    counts = [r["count"] for r in result["images"]]
    assert min(counts) > 0 and max(counts) <= 12


def test_yolox_instance_model_parity_on_real_images(work, yolox_nano, yolox_ckpt, coco_tiny, yolox_instances):
    out = yolox_instances
    spec = read_metadata(gt.load_model(out)).instances.spec
    assert spec.format == "yolox" and not spec.decoded
    roi_model = fused_once(work, yolox_nano, yolox_ckpt, simplify=False)
    result = instance_parity(out, yolox_nano, roi_model, _images(coco_tiny, (*PERSON_IMAGES, NO_PERSON_IMAGE)))
    assert result["passed"], json.dumps(result, indent=1)
    counts = {r["image"]: r["count"] for r in result["images"]}
    assert counts[NO_PERSON_IMAGE] == 0 and counts["000000020992.jpg"] == 1 and counts["000000005001.jpg"] >= 8
    # K = 0: every output has an empty first axis
    session = gt.create_session(gt.load_model(out))
    x = preprocess(read_image(_images(coco_tiny, [NO_PERSON_IMAGE])[0]), (416, 416), YOLOX_PRE)
    boxes, scores, classes, masks = session.run(None, {"images": x})
    assert boxes.shape == (0, 4) and scores.shape == (0,) and classes.shape == (0,) and masks.shape == (0, 3, 416, 416)


def test_yolox_instance_model_parity_on_openvino(work, yolox_nano, yolox_ckpt, coco_tiny, yolox_instances):
    """The instance model (NonMaxSuppression, data-dependent K, K = 0) on OpenVINO matches the references."""
    import openvino  # noqa: F401  (a default dependency group: uv sync installs it)
    roi_model = fused_once(work, yolox_nano, yolox_ckpt, simplify=False)
    result = instance_parity(yolox_instances, yolox_nano, roi_model, _images(coco_tiny, (*PERSON_IMAGES, NO_PERSON_IMAGE)),
                             engine="openvino")
    assert result["passed"] and result["engine"] == "openvino", json.dumps(result, indent=1)
    counts = {r["image"]: r["count"] for r in result["images"]}
    assert counts[NO_PERSON_IMAGE] == 0 and counts["000000005001.jpg"] >= 8
    assert "on openvino" in format_table(result)


def test_raw_image_instance_model_parity_on_openvino(work, yolox_nano, yolox_ckpt, coco_tiny, yolox_raw_instances):
    """The raw-image instance model's outputs (pixel boxes, its internal rois exposed) keep their ONNX
    names on OpenVINO, which merges an output with the tensor feeding it."""
    import openvino  # noqa: F401  (a default dependency group: uv sync installs it)
    roi_model = fused_once(work, yolox_nano, yolox_ckpt, image_input="raw", simplify=False)
    # OpenVINO's in-graph resize differs from onnxruntime's (in which the ROI model reference preprocesses)
    # by one grey level at some pixels (mean 5e-5 of the 0..255 range); this sharp random-weight head's
    # masks move by up to 3.4e-3 from that alone, so masks are held to 1e-2 here, detections to 1e-4.
    result = instance_parity(yolox_raw_instances, yolox_nano, roi_model,
                             _images(coco_tiny, (*PERSON_IMAGES[:2], NO_PERSON_IMAGE)), engine="openvino",
                             mask_atol=1e-2)
    assert result["passed"], json.dumps(result, indent=1)
    assert all(r["box_max_abs"] <= 1e-4 and r["score_max_abs"] <= 1e-4 and r["classes_equal"] for r in result["images"])
    assert [r["count"] > 0 for r in result["images"]] == [True, True, False]


@pytest.mark.parametrize("layout", ["end2end", "yolov5"])
def test_other_detector_layouts_instance_model(work, coco_tiny, layout):
    """Ultralytics end-to-end rows ([1, 300, 6], no NMS) and the YOLOv5/v7 anchor-based layout
    ([1, 3 A, 5 + nc], NMS): format found from the shape, parity with the reference and the ROI model."""
    from roiseg.synthetic.detector import build_stand_in_detector

    detector = build_stand_in_detector(work / f"{layout}.onnx", channels=32, input_hw=(128, 128), detections=layout)
    ckpt = make_checkpoint(work / f"{layout}.pth", detector, variant="detail")
    params = InstanceParams(person_classes=tuple(range(25)), score_threshold=0.3, max_instances=20)
    out = fuse_instances(detector, ckpt, work / f"{layout}_instances.onnx", params=params, simplify=False).out
    model = gt.load_model(out)
    props = read_metadata(model).instances
    assert (props.spec.format, props.params) == (layout, params)
    row_format = layout == "end2end"  # the detector's rows are final: no NMS in the graph
    assert bool(gt.nodes_of_type(model, "NonMaxSuppression")) is not row_format
    assert any("no NMS" in note for note in instance_notes(props)) is row_format
    result = instance_parity(out, detector, fused_once(work, detector, ckpt, simplify=False),
                             _images(coco_tiny, PERSON_IMAGES[:3]))
    assert result["passed"], json.dumps(result, indent=1)
    assert all(0 < r["count"] <= 20 for r in result["images"])


def test_thresholds_and_cap_are_respected(work, yolox_nano, yolox_ckpt, coco_tiny):
    params = InstanceParams(score_threshold=0.6, iou_threshold=0.3, max_instances=4)
    built = build_instances(yolox_nano, yolox_ckpt, params=params)
    assert built.props.detector_runs == 1 and "rois" not in [vi.name for vi in built.build.model.graph.input]
    session = gt.create_session(built.build.model)
    x = preprocess(read_image(_images(coco_tiny, ["000000005001.jpg"])[0]), (416, 416), YOLOX_PRE)
    boxes, scores, classes, masks = session.run(None, {"images": x})
    assert len(scores) == 4 and (scores > 0.6).all() and (classes == 0).all() and masks.shape[0] == 4
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    for i in range(4):
        for j in range(i):
            lo, hi = np.maximum(boxes[i, :2], boxes[j, :2]), np.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = np.prod(np.clip(hi - lo, 0, None)) * (416 * 416)
            union = (area(boxes[i]) + area(boxes[j])) * 416 * 416 - inter
            assert inter / union <= 0.3 + 1e-5


def test_instance_errors(work, stand_in_full, stand_in_ckpt):
    with pytest.raises(InputError, match="out of range"):
        build_instances(stand_in_full, stand_in_ckpt, params=InstanceParams(person_classes=(25,)))
    with pytest.raises(InputError, match="not in the yolox format"):
        build_instances(stand_in_full, stand_in_ckpt, det_format="yolox")
    with pytest.raises(InputError, match="not found"):
        build_instances(stand_in_full, stand_in_ckpt, detections="nope")
    with pytest.raises(InputError, match="not an instance model"):
        instance_parity(gt.load_model(stand_in_full), stand_in_full, stand_in_full, [])


def test_parity_fails_for_masks_of_another_head(work, stand_in_full, stand_in_ckpt, coco_tiny):
    out = work / "stand_in_instances_b.onnx"
    fuse_instances(stand_in_full, stand_in_ckpt, out, simplify=False)
    other = fused_once(work, stand_in_full, make_checkpoint(work / "other.pth", stand_in_full, variant="detail", seed=1),
                       simplify=False)
    result = instance_parity(out, stand_in_full, other, _images(coco_tiny, PERSON_IMAGES[:1]))
    row = result["images"][0]
    assert not result["passed"] and row["box_max_abs"] <= 1e-4 and row["mask_max_abs"] > 1e-2


def test_matching_float16_instances():
    from roiseg.verify.fp16 import match_instances

    ref = Instances(np.float32([[0.1, 0.1, 0.5, 0.5], [0.6, 0.6, 0.9, 0.9], [0.0, 0.0, 0.2, 0.2]]),
                    np.float32([0.9, 0.8, 0.7]), np.int64([0, 0, 0]))
    got = Instances(np.float32([[0.6, 0.6, 0.9, 0.92], [0.1, 0.1, 0.5, 0.52], [0.0, 0.0, 0.2, 0.2], [0.1, 0.1, 0.5, 0.5]]),
                    np.float32([0.8, 0.9, 0.7, 0.3]), np.int64([0, 0, 2, 0]))
    pairs = match_instances(got, ref)
    # reference 0 takes the exact box (IoU 1) over the shifted one; 1 the shifted one of its place;
    # reference 2 has no partner: the box that fits it has another class
    assert [(g, r) for g, r, _ in pairs] == [(3, 0), (0, 1)]
    assert pairs[0][2] == pytest.approx(1.0) and pairs[1][2] == pytest.approx(0.09 / 0.096)
    assert match_instances(got, ref, min_iou=0.99) == [(3, 0, pytest.approx(1.0))]
    assert match_instances(Instances(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)), ref) == []


@pytest.mark.slow
def test_float16_instance_model_parity(work, yolox_nano, yolox_ckpt, coco_tiny):
    """fuse --instances --fp16: detections matched by IoU, masks at float16 tolerances; fails for another head."""

    half = fuse_instances(yolox_nano, yolox_ckpt, work / "yolox_fp16_instances.onnx", fp16=True).out
    images = _images(coco_tiny, (*PERSON_IMAGES, NO_PERSON_IMAGE))
    reference = fused_once(work, yolox_nano, yolox_ckpt, simplify=False)
    result = instance_parity(half, yolox_nano, reference, images, mask_atol=1.0)
    assert result["passed"] and result["fp16"], json.dumps(result, indent=1)
    assert result["matched_of_reference"] >= 0.95 and result["matched_of_model"] >= 0.95
    assert sum(r["matched"] for r in result["images"]) >= 10 and result["images"][-1]["count"] == 0
    assert 0 < result["masks"]["masks"]["mean_abs"] <= 1e-2 and result["masks"]["masks"]["argmax_agreement"] >= 0.98
    assert "float16 model" in format_table(result)
    other = fused_once(work, yolox_nano, make_checkpoint(work / "yolox_other.pth", yolox_nano, YOLOX_TENSOR,
                                                         variant="detail", preprocessing=YOLOX_PRE, seed=1,
                                                         box_prior=0.0), simplify=False)  # not the box: other masks
    bad = instance_parity(half, yolox_nano, other, images, mask_atol=1.0)
    assert not bad["passed"] and "masks: mean abs outside float16 tolerance" in failure_summary(bad)


def test_fuse_instances_cli(work, stand_in_full, stand_in_ckpt, capsys):
    from roiseg.cli import main

    out = work / "cli_instances.onnx"
    code = main(["fuse", "--instances", "--yolo", str(stand_in_full), "--head", str(stand_in_ckpt), "--out", str(out),
                 "--person-classes", "0,3", "--score-threshold", "0.55", "--iou-threshold", "0.4",
                 "--max-instances", "5", "--det-format", "ultralytics", "--no-simplify"])
    printed = capsys.readouterr().out
    assert code == 0 and "output boxes" in printed and "instances: detections output0 (ultralytics)" in printed
    spec, params, _ = read_metadata(gt.load_model(out)).instances
    assert params == InstanceParams((0, 3), 0.55, 0.4, 5) and spec.format == "ultralytics"
    code = main(["fuse", "--instances", "--yolo", str(stand_in_full), "--head", str(stand_in_ckpt),
                 "--out", str(work / "bad.onnx"), "--person-classes", "99"])
    assert code == 2 and "out of range" in capsys.readouterr().err and not (work / "bad.onnx").exists()
    code = main(["fuse", "--yolo", str(stand_in_full), "--head", str(stand_in_ckpt), "--out", str(work / "bad.onnx"),
                 "--max-instances", "5", "--det-preprocessing", "bgr,1"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-instances, --det-preprocessing" in err and "--instances" in err
    with pytest.raises(SystemExit):  # argparse refuses it
        main(["fuse", "--instances", "--yolo", str(stand_in_full), "--head", str(stand_in_ckpt),
              "--det-preprocessing", "hsv,2"])
    assert "expected COLOR,SCALE" in capsys.readouterr().err and not (work / "bad.onnx").exists()


@pytest.fixture(scope="module")
def yolox_raw_instances(work, yolox_nano, yolox_ckpt, coco_tiny):
    out = work / "yolox_raw_instances.onnx"
    return fuse_instances(yolox_nano, yolox_ckpt, out, image_input="raw", check_images=_images(coco_tiny, PERSON_IMAGES[:1])).out


@pytest.mark.slow
def test_raw_image_instance_model_gives_pixel_boxes_and_float16_runs(work, yolox_nano, yolox_ckpt, coco_tiny,
                                                                     yolox_instances, yolox_raw_instances):
    """--image-input raw: the detection path reads the in-graph preprocessed image; boxes in original pixels."""
    model = gt.load_model(yolox_raw_instances)
    assert [vi.name for vi in model.graph.input] == ["image"]
    assert gt.read_props(model)["roiseg.image_input"] == "raw" and len(gt.nodes_of_type(model, "Conv")) == 121
    roi_model = fused_once(work, yolox_nano, yolox_ckpt, image_input="raw", simplify=False)
    result = instance_parity(model, yolox_nano, roi_model, _images(coco_tiny, (*PERSON_IMAGES[:2], NO_PERSON_IMAGE)))
    assert result["passed"], json.dumps(result, indent=1)
    bgr = read_image(_images(coco_tiny, ["000000005001.jpg"])[0])
    boxes, scores, _, masks = gt.create_session(model).run(None, {"image": bgr})
    tensor_boxes = gt.create_session(gt.load_model(yolox_instances)).run(
        ["boxes"], {"images": preprocess(bgr, (416, 416), YOLOX_PRE)})[0]
    h0, w0 = bgr.shape[:2]
    assert boxes.max() > 1.5 and masks.shape == (len(scores), 3, h0, w0)
    # the same boxes up to the in-graph resize (one grey level off OpenCV here and there)
    np.testing.assert_allclose(boxes / np.float32([w0, h0, w0, h0]), tensor_boxes, atol=5e-3)
    half = fuse_instances(yolox_nano, yolox_ckpt, work / "yolox_raw_fp16.onnx", image_input="raw", fp16=True,
                          simplify=False)
    assert "float16" in half.precision_note and gt.read_props(gt.load_model(half.out))["roiseg.fp16"] == "true"
    b16, s16, _, m16 = gt.create_session(gt.load_model(half.out)).run(None, {"image": bgr})
    assert len(s16) == len(scores) and np.abs(b16 - boxes).max() < 2.0 and m16.shape == masks.shape


@pytest.mark.slow
def test_detector_preprocessing_of_its_own(work, yolox_nano, coco_tiny):
    """A head trained on RGB / 255 features of YOLOX, whose detector wants BGR 0..255: a second detector
    copy reads the converted image; the detections are YOLOX's own."""
    ckpt = make_checkpoint(work / "yolox_rgb.pth", yolox_nano, YOLOX_TENSOR, variant="detail")
    out = work / "yolox_det_pre.onnx"
    report = fuse_instances(yolox_nano, ckpt, out, det_preprocessing=YOLOX_PRE, simplify=False)
    assert any("second detector copy" in note for note in report.notes)
    model = gt.load_model(out)
    assert read_metadata(model).instances.det_preprocessing == YOLOX_PRE
    assert gt.read_props(model)["roiseg.preprocessing"] == Preprocessing().to_json()
    roi_model = fused_once(work, yolox_nano, ckpt, simplify=False)
    result = instance_parity(model, yolox_nano, roi_model, _images(coco_tiny, (*PERSON_IMAGES[:2], NO_PERSON_IMAGE)))
    assert result["passed"], json.dumps(result, indent=1)
    assert {r["image"]: r["count"] for r in result["images"]}["000000020992.jpg"] == 1
