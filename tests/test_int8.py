"""fuse --int8: static QDQ quantization calibrated on real images; only convolution weights are int8 (the
MatMuls stay float), the detector's stem conv stays float; no ConvInteger/DynamicQuantizeLinear; the int8
parity against the float model."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
from helpers_graph import image_folder

from roiseg.cli import main
from roiseg.conventions import HEAD_PREFIX
from roiseg.runtime.metadata import read_metadata
from roiseg.verify.parity import format_table, run_parity

CALIBRATION_COUNT = 8
"""Calibration images of the parity test (the first of coco-tiny train in name order; the default is 32)."""
CALIBRATION = ["000000020992.jpg", "000000184324.jpg", "000000005001.jpg", "000000010764.jpg"]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, coco_tiny):
    return image_folder(tmp_path_factory.mktemp("calibration"), coco_tiny, CALIBRATION)


def _quantized_convs(model: onnx.ModelProto) -> Counter:
    """Convs whose weight comes through a DequantizeLinear, counted as head or detector nodes."""
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return Counter("head" if n.name.startswith(HEAD_PREFIX) else "detector" for n in model.graph.node
                   if n.op_type == "Conv" and n.input[1] in dequantized)


def _convs_reading_the_image(model: onnx.ModelProto) -> list:
    """The detector's convs with no Conv upstream (found by walking back from each Conv's data input, not by
    graph order; the head's RGB stem also reads the image and is left out)."""
    producer = {o: n for n in model.graph.node for o in n.output}

    def conv_upstream(tensor: str, seen: set) -> bool:
        node = producer.get(tensor)
        if node is None or tensor in seen:
            return False
        seen.add(tensor)
        return node.op_type == "Conv" or any(conv_upstream(i, seen) for i in node.input)

    return [n for n in model.graph.node if n.op_type == "Conv" and not n.name.startswith(HEAD_PREFIX)
            and not conv_upstream(n.input[0], set())]


@pytest.mark.slow
@pytest.mark.parametrize("scope", ["head", "all"])
def test_int8_on_a_trained_yolox_head_passes_its_parity(scope, yolox_trained_head, yolox_nano, coco_tiny, tmp_path, capsys):
    out = tmp_path / f"int8_{scope}.onnx"
    code = main(["fuse", "--yolo", str(yolox_nano), "--head", str(yolox_trained_head), "--out", str(out), "--int8", scope,
                 "--calibration-images", str(coco_tiny / "images/train2017"), "--calibration-count", str(CALIBRATION_COUNT)])
    assert code == 0, capsys.readouterr().err
    model = onnx.load(str(out))
    assert read_metadata(model).int8 == scope
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0
    assert not {"ConvInteger", "DynamicQuantizeLinear", "MatMulInteger"} & set(ops)  # TensorRT parses QDQ
    convs = _quantized_convs(model)
    assert convs["head"] > 0 and (convs["detector"] > 0) == (scope == "all")
    weights = {i for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm") for i in n.input[1:]}
    initializers = {i.name for i in model.graph.initializer}
    dequantized_weights = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in initializers}
    for node in model.graph.node:  # only convolution weights are stored int8: the paste's MatMuls, RoiAlign... stay float
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            assert not any(i in dequantized_weights for i in node.input[1:]), node.name
    assert dequantized_weights <= weights
    report = run_parity(yolox_nano, yolox_trained_head, fused=out, annotations=coco_tiny / "annotations/instances_val2017.json",
                        images=coco_tiny / "images/val2017", max_images=8)
    assert report["kind"] == "int8" and report["rois"] > 0 and report["argmax_agreement"] >= 0.97, format_table(report)
    if scope == "head":  # the detector in float: the documented tolerances hold
        assert report["passed"] and report["mean_roi_target_iou"] >= 0.95, format_table(report)
    else:  # YOLOX-nano quantized too: 0.93 (neighbour map into the projection only) / 0.91 (into the conv stacks too,
        # the default) on this weakly trained head with 8 calibration images and 21 ROIs of 8 val images (0.87 before
        # its first conv stayed float and its ranges were averaged; docs/performance.md); heads trained on
        # coco-persons agree better (0.940 / 0.946 over 8 of its val images, 16 calibration images): a guard against such failures, not a tolerance
        assert report["mean_roi_target_iou"] >= 0.90, format_table(report)
    stems = _convs_reading_the_image(model)
    assert len(stems) == 1 and stems[0].input[1] not in dequantized_weights  # YOLOX's stem conv stays float in both scopes
    neighbours = [n for n in model.graph.node if n.op_type == "Conv" and "/neighbours/" in n.name]
    assert len(neighbours) == 1 and neighbours[0].input[1] not in dequantized_weights  # its range follows the ROI count
    readers = [n for n in model.graph.node
               if n.op_type == "Conv" and ("/local/body.1/" in n.name or "/refine/body/body.0/" in n.name)]
    assert len(readers) == 2 and not {n.input[1] for n in readers} & dequantized_weights  # the convs reading the map


def test_int8_needs_calibration_images_and_excludes_fp16(stand_in_full, stand_in_checkpoint, calibration, tmp_path, capsys):
    base = ["fuse", "--yolo", str(stand_in_full), "--head", str(stand_in_checkpoint), "--out", str(tmp_path / "m.onnx")]
    for extra, why in [(["--int8", "head"], "--int8 and --calibration-images go together"),
                       (["--int8", "head", "--calibration-images", str(tmp_path / "none")], "no such folder"),
                       (["--int8", "head", "--calibration-images", str(calibration), "--fp16"], "exclude each other")]:
        assert main([*base, *extra]) == 2
        assert why in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
