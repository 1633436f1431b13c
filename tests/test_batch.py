"""Making a static batch dynamic, checking it, and looping when a graph hard-codes batch 1."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from graph_tools import batch_consistent, dims, make_batch_dynamic
from roiseg.features.extractor import OnnxFeatureExtractor

HW = (8, 8)


def _model(hard_coded_batch: bool) -> onnx.ModelProto:
    """images [1,3,8,8] -> Conv 1x1 stride 2 -> [1,4,4,4] 'feat'.

    With ``hard_coded_batch`` the conv output goes through Reshape([1, -1]) -> Softmax -> Reshape back,
    so a batch of 2 is normalised jointly and differs from two single runs.
    """
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.linspace(-1, 1, 12).tolist())
    inits = [w]
    nodes = [helper.make_node("Conv", ["images", "w"], ["conv" if hard_coded_batch else "feat"], strides=[2, 2])]
    if hard_coded_batch:
        inits += [helper.make_tensor("flat", TensorProto.INT64, [2], [1, -1]),
                  helper.make_tensor("back", TensorProto.INT64, [4], [-1, 4, 4, 4])]
        nodes += [helper.make_node("Reshape", ["conv", "flat"], ["r"]),
                  helper.make_node("Softmax", ["r"], ["s"], axis=-1),
                  helper.make_node("Reshape", ["s", "back"], ["feat"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *HW])],
        [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 4, 4, 4])], inits,
        value_info=[helper.make_tensor_value_info("conv", TensorProto.FLOAT, [1, 4, 4, 4])] if hard_coded_batch else [],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _single_runs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [sess.run(["feat"], {"images": x[i : i + 1]})[0] for i in range(len(x))]


def test_make_batch_dynamic_renames_dim0_and_keeps_original():
    model = _model(hard_coded_batch=True)
    dyn = make_batch_dynamic(model)
    assert dims(model.graph.input[0])[0] == 1 and dims(dyn.graph.input[0])[0] == "batch"
    assert dyn.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in dyn.graph.output[0].type.tensor_type.shape.dim[1:]] == [4, 4, 4]
    assert len(dyn.graph.value_info) == 0 and len(model.graph.value_info) == 1
    onnx.checker.check_model(dyn)


def test_dynamic_conv_model_batches_like_single_runs():
    model = _model(hard_coded_batch=False)
    x = np.random.default_rng(0).random((2, 3, *HW), dtype=np.float32)
    sess = ort.InferenceSession(make_batch_dynamic(model).SerializeToString(), providers=["CPUExecutionProvider"])
    batched = sess.run(["feat"], {"images": x})[0]
    assert batch_consistent(batched, _single_runs(model, x))


def test_hard_coded_batch_is_detected():
    model = _model(hard_coded_batch=True)
    x = np.random.default_rng(1).random((2, 3, *HW), dtype=np.float32)
    sess = ort.InferenceSession(make_batch_dynamic(model).SerializeToString(), providers=["CPUExecutionProvider"])
    batched = sess.run(["feat"], {"images": x})[0]
    assert batched.shape == (2, 4, 4, 4)  # runs, but normalised across the batch
    assert not batch_consistent(batched, _single_runs(model, x))


def test_batch_consistent_tolerance_and_shape():
    ref = [np.full((1, 2), 100.0, np.float32), np.full((1, 2), -50.0, np.float32)]
    close = np.array([[100.05, 100.0], [-50.0, -50.0]], np.float32)
    assert batch_consistent(close, ref)  # 0.05 <= 1e-3 * 100
    assert not batch_consistent(close + np.float32(0.2), ref)
    assert not batch_consistent(close[:1], ref)


def test_extractor_loops_when_batching_does_not_hold(tmp_path):
    model = _model(hard_coded_batch=True)
    path = tmp_path / "hard_coded.onnx"
    onnx.save(model, str(path))
    ext = OnnxFeatureExtractor(path, feature_tensor="feat", device="cpu")
    x = np.random.default_rng(2).random((3, 3, *HW), dtype=np.float32)
    expected = np.concatenate(_single_runs(model, x))
    got = ext(torch.from_numpy(x))
    assert ext.batched is False
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-7)
    calls = ext.calls
    np.testing.assert_allclose(ext(x).numpy(), expected, rtol=1e-6, atol=1e-7)
    assert ext.calls == calls + 3  # looped: one run per image
