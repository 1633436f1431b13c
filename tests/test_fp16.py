"""``roiseg fuse --fp16``: float16 compute where safe, float32 I/O, parity at float16 tolerances.

graph_tools.convert_float16 is checked on its own too: a block list (an int8 detector's
quantization ops stay float32), unique node names when one tensor feeds two blocked nodes,
float32 kept for everything computed from a chosen input alone.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SMALL_INPUT_HW
from helpers_graph import boxes, ort_session
from onnx import TensorProto, helper, numpy_helper

from graph_tools import convert_float16
from roiseg.cli import main
from roiseg.runtime.metadata import read_metadata
from roiseg.verify.parity import format_table, run_parity
from roiseg.export.precision import FP16_BLOCK_OPS
from roiseg.export.probes import smooth_image


def _int8_model() -> onnx.ModelProto:
    """x -> DynamicQuantizeLinear -> ConvInteger -> Cast -> * scale -> Relu; and x -> Conv; both to outputs."""
    rng = np.random.default_rng(0)
    w8 = numpy_helper.from_array(rng.integers(-20, 20, (4, 3, 3, 3), dtype=np.int8), "w8")
    wf = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "wf")
    scale = numpy_helper.from_array(np.float32(0.01), "scale")
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
        helper.make_node("ConvInteger", ["xq", "w8", "xz"], ["acc"], name="convint"),
        helper.make_node("Cast", ["acc"], ["accf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["accf", "xs"], ["deq"], name="deq"),
        helper.make_node("Mul", ["deq", "scale"], ["scaled"], name="mul"),
        helper.make_node("Relu", ["scaled"], ["y"], name="relu"),
        helper.make_node("Conv", ["x", "wf"], ["c1"], name="conv_a"),
        helper.make_node("Conv", ["x", "wf"], ["c2"], name="conv_b"),
        helper.make_node("Add", ["c1", "c2"], ["z"], name="add"),
    ]
    graph = helper.make_graph(nodes, "int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4, 6, 6])], [w8, wf, scale])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_convert_float16_keeps_quantization_ops_float32_and_names_unique():
    model = _int8_model()
    half, report = convert_float16(model, block_ops=("DynamicQuantizeLinear", "ConvInteger"))
    names = [n.name for n in half.graph.node]
    assert len(names) == len(set(names))
    by_name = {n.name: n for n in half.graph.node}
    assert by_name["dql"].input[0] == "x"  # float32 input, no cast in front
    assert {numpy_helper.to_array(i).dtype for i in half.graph.initializer if i.name == "wf"} == {np.dtype(np.float16)}
    assert [o.type.tensor_type.elem_type for o in half.graph.output] == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert report.float16_nodes >= 3 and report.blocked_ops.get("DynamicQuantizeLinear") == 1
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref, got = ort_session(model).run(None, {"x": x}), ort_session(half).run(None, {"x": x})
    for a, b in zip(ref, got):
        assert b.dtype == np.float32 and np.abs(a - b).max() <= 2e-2 * max(1.0, np.abs(a).max())


def test_convert_float16_keeps_what_one_input_alone_computes():
    nodes = [helper.make_node("Mul", ["b", "k"], ["bk"], name="geom"),
             helper.make_node("Add", ["a", "bk"], ["y"], name="mix")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4]),
                                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.full(4, 640.0, np.float32), "k")])
    half, report = convert_float16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                   keep_float32_from=["b"])
    assert report.float16_nodes == 1 and report.blocked_ops == {"Mul": 1}
    assert {i.name: i.data_type for i in half.graph.initializer} == {"k": TensorProto.FLOAT}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fp16")


def test_fp16_fused_model_contract_and_parity(work, stand_in_full, stand_in_checkpoint, coco_tiny, capsys):
    ckpt = stand_in_checkpoint
    out = work / "fp16.onnx"
    assert main(["fuse", "--yolo", str(stand_in_full), "--head", str(ckpt), "--out", str(out), "--fp16"]) == 0
    assert "precision: float16:" in capsys.readouterr().out
    model = onnx.load(str(out))
    assert read_metadata(out).fp16 is True
    assert [i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]] == [TensorProto.FLOAT] * 3
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names))
    blocked = {n.op_type for n in model.graph.node if n.op_type in FP16_BLOCK_OPS}
    assert "RoiAlign" in blocked
    sess = ort_session(out)
    assert sess.run(None, {"images": smooth_image(SMALL_INPUT_HW), "rois": np.zeros((0, 4), np.float32)})[0].shape[0] == 0
    got = sess.run(None, {"images": smooth_image(SMALL_INPUT_HW), "rois": boxes(4)})[0]
    assert got.dtype == np.float32 and np.allclose(got.sum(1), 1.0, atol=1e-2)

    report = run_parity(stand_in_full, ckpt, fused=out, annotations=coco_tiny / "annotations/instances_val2017.json",
                        images=coco_tiny / "images/val2017", max_images=1, large_set=0)
    st = report["stages"]
    assert report["passed"] and report["fp16"], format_table(report)
    assert report["mean_atol"] == 1e-2 and report["min_argmax"] == 0.98
    assert st["fused"]["mean_abs"] <= 1e-2 and st["fused"]["argmax_agreement"] >= 0.98
    assert "skipped" in st["simplify"] and "float16" in st["simplify"]["skipped"]
    assert st["trim"]["tolerance"] <= 1e-4 * max(1.0, st["trim"]["max_abs_reference"])
    assert "(float16 model)" in format_table(report)
    strict = run_parity(stand_in_full, ckpt, fused=out, max_images=1, large_set=0, atol=1e-6, min_argmax=1.0)
    assert strict["passed"] is False  # float16 does move the probabilities


def test_parity_cli_refuses_bad_tolerances(work, stand_in_full, capsys):
    for flag, value, msg in (("--atol", "-1", "--atol must be >= 0"), ("--min-argmax", "1.5", "--min-argmax must be a fraction")):
        code = main(["parity-check", "--yolo", str(stand_in_full), "--head", str(work / "x.pth"), flag, value,
                     "--report", str(work / "r.json")])
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(err) == 1 and msg in err[0]
