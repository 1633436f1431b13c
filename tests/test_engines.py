"""Engines: parity on OpenVINO (optional group, f32 precision), TensorRT notes at fuse time, TensorRT
optimisation profiles for the ROI count."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import pytest
from helpers_graph import fused_once, make_checkpoint

from roiseg.cli import main
from roiseg.export.tensorrt import tensorrt_notes
from roiseg.runtime.engines import check_trt_rois, trt_profiles
from roiseg.verify.parity import format_table, run_parity
from roiseg.errors import InputError


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def ckpt(stand_in_checkpoint):
    return stand_in_checkpoint


def test_openvino_parity(work, stand_in_full, ckpt, coco_tiny):
    import openvino  # noqa: F401  (a default dependency group: uv sync installs it)
    fused = fused_once(work, stand_in_full, ckpt, outputs=("probs", "labels"))
    report = run_parity(stand_in_full, ckpt, fused=fused, annotations=coco_tiny / "annotations/instances_val2017.json",
                        images=coco_tiny / "images/val2017", max_images=1, large_set=0, engine="openvino")
    assert report["passed"] and report["engine"] == "openvino", format_table(report)
    assert report["stages"]["fused"]["max_abs"] <= 1e-4 and report["stages"]["labels"]["argmax_agreement"] >= 0.9999
    assert report["rois"] >= 1 + 16 + 6  # the contract sets (0 ROIs, awkward boxes) ran on OpenVINO too
    assert "on openvino" in format_table(report)


def test_openvino_session_keeps_the_onnx_output_names():
    """OpenVINO merges a graph output with the tensor feeding it (here ``rois``, an ``Identity`` of the
    clipped boxes) and may then name it by the inner tensor; the session answers to the ONNX names."""
    import openvino  # noqa: F401  (a default dependency group: uv sync installs it)
    import graph_tools as gt
    from roiseg.detection.formats import DetectionSpec, InstanceParams
    from roiseg.detection.graph import postprocess_model

    spec = DetectionSpec("det", "end2end", (320, 480), 0)
    model = postprocess_model(spec, InstanceParams(), 17, 8, input_shape=[1, 300, 6], roi_feed="rois")
    rows = (np.random.default_rng(0).random((1, 300, 6)) * [480, 320, 480, 320, 1, 0]).astype(np.float32)
    ov, ort = gt.create_openvino_session(model, "CPU", "f32"), gt.create_session(model)
    names = [o.name for o in ort.get_outputs()]
    assert [o.name for o in ov.get_outputs()] == names == ["boxes", "scores", "classes", "rois"]
    assert [i.name for i in ov.get_inputs()] == ["det"]
    for got, want in zip(ov.run(["rois", "boxes"], {"det": rows}), ort.run(["rois", "boxes"], {"det": rows})):
        assert got.shape == want.shape and len(want) > 0
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_openvino_session_forces_f32():
    import openvino  # noqa: F401  (a default dependency group: uv sync installs it)
    from onnx import TensorProto, helper

    import graph_tools as gt

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])])
    sess = gt.create_openvino_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert sess.config["INFERENCE_PRECISION_HINT"] == "f32"
    assert sess.compiled.get_property("INFERENCE_PRECISION_HINT").to_string() == "f32"
    assert sess.run(None, {"x": np.array([-1.0, 2.0], np.float32)})[0].tolist() == [0.0, 2.0]


def test_parity_cli_refuses_an_unknown_engine(work, stand_in_full, ckpt, capsys):
    code = main(["parity-check", "--yolo", str(stand_in_full), "--head", str(ckpt), "--engine", "tensorrt",
                 "--report", str(work / "r.json")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and err == ["error: unknown engine 'tensorrt'; expected one of onnxruntime, openvino"]


def test_fuse_notes_the_roialign_plugin_and_warns_about_an_int8_detector(work, stand_in_full, ckpt, capsys):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    assert main(["fuse", "--yolo", str(stand_in_full), "--head", str(ckpt), "--out", str(work / "f.onnx")]) == 0
    out = capsys.readouterr().out
    assert "note: TensorRT runs RoiAlign as the ROIAlign_TRT plugin" in out and "does not take" not in out

    int8 = work / "int8_detector.onnx"
    quantize_dynamic(str(stand_in_full), str(int8), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    ckpt8 = make_checkpoint(work / "int8.pth", int8)
    assert main(["fuse", "--yolo", str(int8), "--head", str(ckpt8), "--out", str(work / "f8.onnx"), "--fp16"]) == 0
    out = capsys.readouterr().out
    ops = collections.Counter(n.op_type for n in onnx.load(str(work / "f8.onnx")).graph.node)
    assert ops["ConvInteger"] and ops["DynamicQuantizeLinear"]
    warning = next(line for line in out.splitlines() if "does not take" in line)
    assert warning.startswith("  warning: TensorRT's ONNX parser does not take ConvInteger (")
    assert "DynamicQuantizeLinear" in warning
    assert tensorrt_notes(onnx.load(str(work / "f8.onnx")))[0] == warning.removeprefix("  warning: ")


def test_trt_profiles_for_the_roi_count():
    assert trt_profiles((640, 640)) == {
        "trt_profile_min_shapes": "images:1x3x640x640,rois:1x4",
        "trt_profile_opt_shapes": "images:1x3x640x640,rois:8x4",
        "trt_profile_max_shapes": "images:1x3x640x640,rois:64x4",
    }
    raw = trt_profiles((416, 416), "raw", (2, 16, 128))
    assert raw["trt_profile_opt_shapes"] == "image:416x416x3,rois:16x4"
    assert raw["trt_profile_max_shapes"] == "image:4096x4096x3,rois:128x4"
    for bad in ((0, 8, 64), (8, 4, 64), (1, 8)):
        with pytest.raises(InputError, match="TensorRT ROI profile"):
            check_trt_rois(bad)


def test_choose_providers_passes_the_profiles_to_tensorrt(monkeypatch):
    import onnxruntime as ort
    import torch

    from roiseg.features import providers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    choice = providers.choose_providers("cuda", trt_profiles=trt_profiles((640, 640)))
    trt = choice.providers[0][1]
    assert choice.providers[0][0] == "TensorrtExecutionProvider"
    assert trt["trt_profile_min_shapes"].endswith("rois:1x4") and trt["trt_profile_max_shapes"].endswith("rois:64x4")


def test_predict_cli_refuses_a_bad_trt_profile(work, capsys):
    code = main(["predict", "--model", str(work / "none.onnx"), "--image", str(work / "none.jpg"), "--roi", "1,2,30,40",
                 "--trt-rois", "8,4,64", "--out", str(work / "o.png")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and err == ["error: --trt-rois must be three integers MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, "
                                 "got '8,4,64'"]
