"""graph_tools.build (hand-written graphs) and graph_tools.dedupe (common subexpression elimination)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

import graph_tools as gt
from graph_tools.build import GraphBuilder, value_info
from graph_tools.dedupe import merge_duplicate_nodes


def _two_branch_model(random_op: bool = False, expose_copy: bool = False) -> onnx.ModelProto:
    """x -> (x * w) + 1 computed twice with equal weights under other names, outputs a, b."""
    b = GraphBuilder("t/")
    branches = []
    for i in range(2):
        w = b.const(np.arange(4, dtype=np.float32), hint=f"w{i}")
        y = b.op("Mul", ["x", w])
        if random_op:
            y = b.op("Add", [y, b.op("RandomUniformLike", [y], seed=1.0)])
        branches.append(b.op("Add", [y, b.const(np.float32(1.0))], outputs=["a" if i == 0 else "b"]))
    outputs = [value_info("a", TensorProto.FLOAT, [4]), value_info("b", TensorProto.FLOAT, [4])]
    if expose_copy:
        b.op("Relu", ["a"], outputs=["ra"])
        b.op("Relu", ["a"], outputs=["rb"])
        outputs += [value_info("ra", TensorProto.FLOAT, [4]), value_info("rb", TensorProto.FLOAT, [4])]
    return b.model([value_info("x", TensorProto.FLOAT, [4])], outputs, 17, 8)


def test_builder_makes_a_runnable_model():
    b = GraphBuilder("p/")
    y = b.op("Mul", ["x", b.const([2.0, 3.0])])
    values, order = b.op("TopK", [y, b.const([1], np.int64)], outputs=2, axis=0)
    b.op("Identity", [values], outputs=["top"])
    model = b.model([value_info("x", TensorProto.FLOAT, [2])], [value_info("top", TensorProto.FLOAT, [1])], 17, 8)
    assert all(n.name.startswith("p/") for n in model.graph.node) and order.startswith("p/")
    out = gt.create_session(model).run(None, {"x": np.float32([5, 4])})[0]
    np.testing.assert_array_equal(out, [12.0])


def test_builder_refuses_an_invalid_graph():
    b = GraphBuilder()
    b.op("Add", ["x", "missing"], outputs=["y"])
    with pytest.raises(gt.GraphError, match="invalid"):
        b.model([value_info("x", TensorProto.FLOAT, [2])], [value_info("y", TensorProto.FLOAT, [2])], 17, 8)


def test_duplicate_nodes_and_weights_are_merged_outputs_kept():
    model = _two_branch_model()
    merged, report = merge_duplicate_nodes(model)
    # the second Mul merges; the second Add writes graph output "b", so it stays (reading the merged Mul)
    assert report.nodes_removed == 1 and len(merged.graph.node) == 3
    assert len(merged.graph.initializer) == 2  # one weight, one constant 1.0
    onnx.checker.check_model(merged, full_check=True)
    x = {"x": np.float32([1, 2, 3, 4])}
    for a, b in zip(gt.create_session(model).run(None, x), gt.create_session(merged).run(None, x)):
        np.testing.assert_array_equal(a, b)


def test_random_ops_and_graph_outputs_are_not_merged():
    merged, report = merge_duplicate_nodes(_two_branch_model(random_op=True))
    assert len(gt.nodes_of_type(merged, "RandomUniformLike")) == 2
    merged, report = merge_duplicate_nodes(_two_branch_model(expose_copy=True))
    assert len(gt.nodes_of_type(merged, "Relu")) == 2 and [o.name for o in merged.graph.output] == ["a", "b", "ra", "rb"]


def test_a_detector_spliced_with_itself_runs_once(stand_in_full):
    """Two copies of the same detector sharing the image input collapse to one."""
    det = gt.load_model(stand_in_full)
    head = gt.trim_at_tensor(det, ["output0"])
    both = gt.splice(det, head, {}, share_inputs={"images": "images"}, public={"output0": "again"}, prefix="copy/")
    merged, report = merge_duplicate_nodes(both)
    alone, _ = merge_duplicate_nodes(det)  # the exporter repeats some shape arithmetic itself
    assert len(merged.graph.node) == len(alone.graph.node) + 1  # + the node writing graph output "again"
    assert len(gt.nodes_of_type(merged, "Conv")) == len(gt.nodes_of_type(det, "Conv"))
    x = {"images": np.random.default_rng(0).random((1, 3, 128, 128), dtype=np.float32)}
    a, b = gt.create_session(merged).run(None, x)
    np.testing.assert_array_equal(a, b)


def test_loop_back_feeds_an_input_from_inside_and_sorts_the_nodes():
    """y = (x * 2) + r where r was an input: r computed as x * 2 + 1 inside the model."""
    b = GraphBuilder("l/")
    b.op("Add", [b.op("Mul", ["x", b.const(np.float32(2.0))]), "r"], outputs=["y"])
    b.op("Add", ["x", b.const(np.float32(1.0))], outputs=["r_inside"])
    model = b.model([value_info("x", TensorProto.FLOAT, [3]), value_info("r", TensorProto.FLOAT, [3])],
                    [value_info("y", TensorProto.FLOAT, [3]), value_info("r_inside", TensorProto.FLOAT, [3])], 17, 8)
    looped = gt.loop_back(model, "r_inside", "r")
    assert [vi.name for vi in looped.graph.input] == ["x"] and [o.name for o in looped.graph.output] == ["y"]
    onnx.checker.check_model(looped, full_check=True)
    y = gt.create_session(looped).run(None, {"x": np.float32([1, 2, 3])})[0]
    np.testing.assert_array_equal(y, [4, 7, 10])
    with pytest.raises(gt.GraphError, match="cycle"):
        gt.loop_back(model, "y", "r")
    with pytest.raises(gt.GraphError, match="not an input"):
        gt.loop_back(model, "r_inside", "nope")


def test_first_nodes_downstream_stops_at_the_first_node_of_the_types():
    """x -> Sigmoid (s1) -> Sigmoid (s3); x -> Mul -> Sigmoid (s2): from x the walk finds s1 and s2, never s3,
    which only the path through s1 reaches."""
    b = GraphBuilder("t/")
    s1 = b.op("Sigmoid", ["x"])
    s2 = b.op("Sigmoid", [b.op("Mul", ["x", b.const(np.ones(4, np.float32))])], outputs=["b"])
    b.op("Sigmoid", [s1], outputs=["a"])
    model = b.model([value_info("x", TensorProto.FLOAT, [4])],
                    [value_info("a", TensorProto.FLOAT, [4]), value_info("b", TensorProto.FLOAT, [4])], 17, 8)
    found = gt.first_nodes_downstream(model, "x", ("Sigmoid",))
    assert [n.output[0] for n in found] == [s1, s2]
    assert [n.op_type for n in gt.first_nodes_downstream(model, "x", ("Mul",))] == ["Mul"]
    assert gt.first_nodes_downstream(model, "a", ("Sigmoid",)) == []  # a graph output: nothing reads it
