"""graph_tools.opset + graph_tools.splice: one model from a trimmed detector and the head."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from helpers_graph import YOLOX_TENSOR, boxes, feature_output, ort_session

from graph_tools import (
    GraphError,
    choose_ir_version, convert_opset, load_model, node_attributes, nodes_of_type, ort_max_ir_version, rename_tensors,
    trim_at_tensor,
)
from roiseg.conventions import HEAD_PREFIX
from roiseg.export.wrapper import export_head
from roiseg.export.fuse import splice_head as splice
from roiseg.conventions import DEFAULT_FEATURE_TENSOR
from roiseg.errors import InputError
from roiseg.modeling import HeadConfig, build_head


def _head(channels: int, input_hw: tuple[int, int], variant: str = "detail", seed: int = 0):
    torch.manual_seed(seed)
    cfg = HeadConfig(in_channels=channels, stride=8, input_hw=input_hw, variant=variant, hidden=32, num_convs=1,
                     detail_channels=8)
    return build_head(cfg).eval()


def _reference(detector, tensor, head, image, rois):
    """PyTorch path: features of the unmodified detector (onnxruntime), head in torch."""
    feats = torch.from_numpy(feature_output(detector, tensor, image))
    with torch.no_grad():
        return head.predict_masks(feats, torch.from_numpy(rois), torch.zeros(len(rois), dtype=torch.int64),
                                  torch.from_numpy(image)).numpy()


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def stand_in_fused(stand_in_full):
    trimmed = trim_at_tensor(load_model(stand_in_full), DEFAULT_FEATURE_TENSOR)
    head = _head(32, (128, 128))
    return trimmed, head, splice(trimmed, export_head(head), DEFAULT_FEATURE_TENSOR)


def test_spliced_model_contract(stand_in_full, stand_in_fused):
    trimmed, head, fused = stand_in_fused
    onnx.checker.check_model(fused, full_check=True)
    assert [(vi.name, _dims(vi)) for vi in fused.graph.input] == [("images", [1, 3, 128, 128]), ("rois", ["num_rois", 4])]
    assert [(vi.name, _dims(vi)) for vi in fused.graph.output] == [("masks", ["num_rois", 3, 128, 128])]
    # Exactly one detector path: every trimmed-detector node appears once, unprefixed; the rest is the head.
    det_ops = Counter(n.op_type for n in trimmed.graph.node)
    fused_det_ops = Counter(n.op_type for n in fused.graph.node if not n.name.startswith(HEAD_PREFIX))
    assert fused_det_ops == det_ops
    # The head reads the shared image input directly (detail variant) and both RoiAligns say half_pixel.
    ras = nodes_of_type(fused, "RoiAlign")
    assert len(ras) == 2 and all(node_attributes(n)["coordinate_transformation_mode"] == "half_pixel" for n in ras)
    assert any(n.input[0] == "images" for n in ras)
    assert any(n.input[0] == DEFAULT_FEATURE_TENSOR for n in ras)


def test_spliced_model_matches_the_pytorch_path(stand_in_full, stand_in_fused):
    _, head, fused = stand_in_fused
    sess = ort_session(fused)
    image = np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)
    for n in (1, 7, 64):
        rois = boxes(n, seed=n)
        got = sess.run(None, {"images": image, "rois": rois})[0]
        ref = _reference(stand_in_full, DEFAULT_FEATURE_TENSOR, head, image, rois)
        assert got.shape == (n, 3, 128, 128)
        assert np.abs(got - ref).max() < 1e-5


def test_yolox_opset_11_is_converted_and_ir_reconciled(yolox_nano):
    trimmed = trim_at_tensor(load_model(yolox_nano), YOLOX_TENSOR)
    assert (trimmed.opset_import[0].version, trimmed.ir_version) == (11, 6)
    converted = convert_opset(trimmed, 17, "yolox")
    assert converted.opset_import[0].version == 17 and converted.ir_version >= 8  # opset 17 needs IR >= 8
    image = np.random.default_rng(1).random((1, 3, 416, 416), dtype=np.float32)
    np.testing.assert_allclose(ort_session(converted).run(None, {"images": image})[0],
                               feature_output(yolox_nano, YOLOX_TENSOR, image), atol=1e-5, rtol=0)
    head = _head(64, (416, 416), variant="baseline")
    fused = splice(converted, export_head(head), YOLOX_TENSOR)
    onnx.checker.check_model(fused, full_check=True)
    assert fused.opset_import[0].version == 17
    rois = boxes(7, seed=3)
    got = ort_session(fused).run(None, {"images": image, "rois": rois})[0]
    assert np.abs(got - _reference(yolox_nano, YOLOX_TENSOR, head, image, rois)).max() < 1e-4


def test_splice_refuses_different_opsets(yolox_nano):
    trimmed = trim_at_tensor(load_model(yolox_nano), YOLOX_TENSOR)
    with pytest.raises(InputError, match="opset"):
        splice(trimmed, export_head(_head(64, (416, 416), variant="baseline")), YOLOX_TENSOR)


def test_impossible_conversion_is_a_clear_error(yolox_nano):
    with pytest.raises(GraphError, match=r"cannot convert yolox from opset 11 to 8"):
        convert_opset(load_model(yolox_nano), 8, "yolox")


def test_ir_version_is_capped_at_what_onnxruntime_loads(stand_in_full):
    trimmed = trim_at_tensor(load_model(stand_in_full), DEFAULT_FEATURE_TENSOR)
    head = export_head(_head(32, (128, 128)))
    head.ir_version = ort_max_ir_version() + 3  # written by a newer exporter
    assert choose_ir_version(trimmed, head) == ort_max_ir_version()
    fused = splice(trimmed, head, DEFAULT_FEATURE_TENSOR)
    assert fused.ir_version == ort_max_ir_version()
    ort_session(fused)  # loads


def test_name_collisions_and_a_differently_named_image_input(stand_in_full, stand_in_fused):
    _, head, reference_model = stand_in_fused
    trimmed = trim_at_tensor(load_model(stand_in_full), DEFAULT_FEATURE_TENSOR)
    # A detector whose image input is "input" and whose internal tensors are called "images", "masks" and
    # "roiseg_head/features" (the head's own prefixed names).
    first, second = trimmed.graph.node[0].output[0], trimmed.graph.node[1].output[0]
    third = trimmed.graph.node[2].output[0]
    rename_tensors(trimmed.graph, {"images": "input", first: "masks", second: "images", third: HEAD_PREFIX + "features"})
    fused = splice(trimmed, export_head(head), DEFAULT_FEATURE_TENSOR)
    onnx.checker.check_model(fused, full_check=True)
    assert [vi.name for vi in fused.graph.input] == ["images", "rois"]
    assert [vi.name for vi in fused.graph.output] == ["masks"]
    image = np.random.default_rng(2).random((1, 3, 128, 128), dtype=np.float32)
    rois = boxes(5, seed=5)
    got = ort_session(fused).run(None, {"images": image, "rois": rois})[0]
    want = ort_session(reference_model).run(None, {"images": image, "rois": rois})[0]
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)


def test_head_built_for_another_input_size_is_refused(stand_in_full):
    trimmed = trim_at_tensor(load_model(stand_in_full), DEFAULT_FEATURE_TENSOR)
    with pytest.raises(InputError, match=r"\[1, 3, 96, 96\]"):
        splice(trimmed, export_head(_head(32, (96, 96))), DEFAULT_FEATURE_TENSOR)


def test_a_dynamic_detector_batch_is_pinned_to_one(stand_in_full):
    from graph_tools import make_batch_dynamic

    trimmed = make_batch_dynamic(trim_at_tensor(load_model(stand_in_full), DEFAULT_FEATURE_TENSOR))
    assert _dims(trimmed.graph.input[0])[0] == "batch"
    fused = splice(trimmed, export_head(_head(32, (128, 128))), DEFAULT_FEATURE_TENSOR)
    onnx.checker.check_model(fused, full_check=True)
    assert _dims(fused.graph.input[0]) == [1, 3, 128, 128]
    out = ort_session(fused).run(None, {"images": np.zeros((1, 3, 128, 128), np.float32), "rois": boxes(2)})[0]
    assert out.shape == (2, 3, 128, 128)


def test_file_metadata_is_read_without_onnx_and_equals_onnx_s(stand_in_full, tmp_path):
    """graph_tools.read_file_props reads metadata_props from the protobuf wire format (graph skipped)."""
    from graph_tools import GraphError, read_file_props, read_props, write_props

    model = onnx.load(str(stand_in_full))
    write_props(model, {"a": "1", "roiseg.x": "ü € 😀", "": "empty key", "b": ""})
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert read_file_props(path) == read_props(onnx.load(str(path))) == {"a": "1", "roiseg.x": "ü € 😀", "": "empty key",
                                                                         "b": ""}
    (tmp_path / "cut.onnx").write_bytes(path.read_bytes()[:-3])
    (tmp_path / "text.onnx").write_text('{"not": "protobuf"}')
    for bad in ("cut.onnx", "text.onnx"):
        with pytest.raises(GraphError, match="not a readable ONNX model"):
            read_file_props(tmp_path / bad)
    with pytest.raises(GraphError, match="not found"):
        read_file_props(tmp_path / "none.onnx")
