"""graph_tools.trim: cut a detector at a named tensor (stand-in, yolox_nano, external data)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers_graph import YOLOX_TENSOR, feature_output, ort_session

from graph_tools import load_model, save_model, trim_at_tensor
from roiseg.conventions import DEFAULT_FEATURE_TENSOR
from graph_tools import GraphError
from conftest import SMALL_CHANNELS, SMALL_INPUT_HW


def _image(hw, seed=0):
    return np.random.default_rng(seed).random((1, 3, *hw), dtype=np.float32)


def _consumed(model: onnx.ModelProto) -> set[str]:
    return {name for node in model.graph.node for name in node.input}


def _output_shape(model: onnx.ModelProto, name: str) -> list:
    for o in model.graph.output:
        if o.name == name:
            return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in o.type.tensor_type.shape.dim]
    raise KeyError(name)


def test_trim_keeps_only_the_path_to_the_tensor(stand_in_full):
    model = load_model(stand_in_full)
    trimmed = trim_at_tensor(model, DEFAULT_FEATURE_TENSOR)
    assert [o.name for o in trimmed.graph.output] == [DEFAULT_FEATURE_TENSOR]
    h, w = SMALL_INPUT_HW
    assert _output_shape(trimmed, DEFAULT_FEATURE_TENSOR) == [1, SMALL_CHANNELS, h // 8, w // 8]
    # Every initializer left is used, and the detection head (model.35) is gone entirely.
    assert {i.name for i in trimmed.graph.initializer} <= _consumed(trimmed)
    assert not any("model.35" in i.name for i in trimmed.graph.initializer)
    assert not any(n.name.startswith("/model.35/") for n in trimmed.graph.node)
    assert len(trimmed.graph.node) < len(model.graph.node)
    assert trimmed.ir_version == model.ir_version and list(trimmed.opset_import) == list(model.opset_import)
    onnx.checker.check_model(trimmed, full_check=True)
    x = _image(SMALL_INPUT_HW)
    got = ort_session(trimmed).run(None, {"images": x})[0]
    np.testing.assert_array_equal(got, feature_output(stand_in_full, DEFAULT_FEATURE_TENSOR, x))


def test_trim_can_keep_the_original_outputs(stand_in_full):
    model = load_model(stand_in_full)
    both = trim_at_tensor(model, DEFAULT_FEATURE_TENSOR, keep_original_outputs=True)
    assert [o.name for o in both.graph.output] == [DEFAULT_FEATURE_TENSOR, "output0"]
    x = _image(SMALL_INPUT_HW, 1)
    feats, det = ort_session(both).run(None, {"images": x})
    np.testing.assert_array_equal(det, ort_session(model).run(None, {"images": x})[0])
    np.testing.assert_array_equal(feats, feature_output(stand_in_full, DEFAULT_FEATURE_TENSOR, x))


def test_trim_yolox_keeps_opset_11_and_ir_6(yolox_nano):
    model = load_model(yolox_nano)
    assert (model.opset_import[0].version, model.ir_version) == (11, 6)
    trimmed = trim_at_tensor(model, YOLOX_TENSOR)
    assert (trimmed.opset_import[0].version, trimmed.ir_version) == (11, 6)
    assert _output_shape(trimmed, YOLOX_TENSOR) == [1, 64, 52, 52]
    assert {i.name for i in trimmed.graph.initializer} <= _consumed(trimmed)
    x = _image((416, 416), 2)
    got = ort_session(trimmed).run(None, {"images": x})[0]
    np.testing.assert_array_equal(got, feature_output(yolox_nano, YOLOX_TENSOR, x))


def test_trim_a_model_stored_with_external_data(stand_in_full, tmp_path):
    src = tmp_path / "ext" / "detector.onnx"
    src.parent.mkdir()
    onnx.save_model(onnx.load(str(stand_in_full)), str(src), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="detector.onnx.data", size_threshold=0)
    assert (src.parent / "detector.onnx.data").is_file()
    trimmed = trim_at_tensor(load_model(src), DEFAULT_FEATURE_TENSOR)
    out = save_model(trimmed, tmp_path / "out" / "trimmed.onnx", external=True)
    data = out.parent / "trimmed.onnx.data"
    assert data.is_file()
    # The detection head's weights did not travel: the new data file is smaller than the original one.
    assert data.stat().st_size < (src.parent / "detector.onnx.data").stat().st_size
    reloaded = onnx.load(str(out))
    assert [o.name for o in reloaded.graph.output] == [DEFAULT_FEATURE_TENSOR]
    x = _image(SMALL_INPUT_HW, 3)
    got = ort_session(out).run(None, {"images": x})[0]
    np.testing.assert_array_equal(got, feature_output(stand_in_full, DEFAULT_FEATURE_TENSOR, x))


def test_missing_tensor_lists_the_nearest_candidates_with_shapes(stand_in_full):
    model = load_model(stand_in_full)
    with pytest.raises(GraphError) as err:
        trim_at_tensor(model, "/model.34/Concat_output_9")
    msg = str(err.value)
    assert "/model.34/Concat_output_9" in msg and "nearest candidates" in msg
    h, w = SMALL_INPUT_HW
    assert f"{DEFAULT_FEATURE_TENSOR} [1, {SMALL_CHANNELS}, {h // 8}, {w // 8}]" in msg
    assert "\n" not in msg
