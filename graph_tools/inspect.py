"""Loading ONNX models with clear errors, and finding tensors by name.

Shapes are reported as lists of ints (static dims) or strings (symbolic dims, ``"?"`` unknown).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import onnx
from onnx import helper

from graph_tools.errors import GraphError

Dim = Union[int, str]


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    """The model's opset for ``domain`` (``""`` = ``ai.onnx``)."""
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(imp.version)
    raise GraphError(f"model imports no opset for domain {domain!r}")


def dims(vi: onnx.ValueInfoProto) -> list[Dim]:
    """Shape of a value: ints for static dims, the symbol for named ones, ``"?"`` for unknown ones."""
    shape = vi.type.tensor_type.shape
    out: list[Dim] = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append("?")
    return out


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference that tolerates models over 2 GB and unknown ops (returns the input on failure)."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True)
    except (ValueError, onnx.onnx_cpp2py_export.shape_inference.InferenceError):
        return model


def tensor_shapes(model: onnx.ModelProto) -> dict[str, list[Dim] | None]:
    """Every tensor produced or consumed in the graph -> its shape (``None`` when unknown).

    Runs shape inference on a copy without the weights' bytes, so it is cheap on big models.
    """
    light = onnx.ModelProto()
    light.CopyFrom(model)
    for init in light.graph.initializer:
        # Keep dims and type, drop big payloads (weights); small ones (shapes, axes) feed data propagation.
        if len(init.raw_data) > 65536 or init.data_location == onnx.TensorProto.EXTERNAL:
            init.ClearField("raw_data")
            init.data_location = onnx.TensorProto.DEFAULT
            del init.external_data[:]
    inferred = infer_shapes(light)
    shapes: dict[str, list[Dim] | None] = {}
    for node in model.graph.node:
        for name in list(node.input) + list(node.output):
            if name:
                shapes.setdefault(name, None)
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        shapes[vi.name] = dims(vi)
    for init in model.graph.initializer:
        shapes[init.name] = [int(d) for d in init.dims]
    return shapes


def nearest_tensors(model: onnx.ModelProto, name: str, n: int = 8) -> list[tuple[str, list[Dim] | None]]:
    """The ``n`` activation tensors whose names are closest to ``name``, with shapes.

    Initializers (weights) are left out; 4-D tensors are preferred when names tie.
    """
    shapes = tensor_shapes(model)
    weights = {i.name for i in model.graph.initializer}
    candidates = [t for t in shapes if t not in weights]
    close = difflib.get_close_matches(name, candidates, n=n, cutoff=0.0)
    return [(c, shapes.get(c)) for c in close]


def require_tensor(model: onnx.ModelProto, name: str, model_path: str | Path | None = None) -> None:
    """Raise :class:`GraphError` listing the nearest candidates when ``name`` is not a tensor of the graph."""
    produced = {o for node in model.graph.node for o in node.output}
    produced |= {i.name for i in model.graph.input}
    if name in produced:
        return
    near = nearest_tensors(model, name)
    where = f" in {model_path}" if model_path else ""
    listing = "; ".join(f"{t} {s if s is not None else '[?]'}" for t, s in near)
    raise GraphError(f"tensor {name!r} not found{where}; nearest candidates: {listing}")


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers: the values a caller feeds."""
    weights = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in weights]


def describe_io(model: onnx.ModelProto) -> dict[str, list[tuple[str, list[Dim]]]]:
    """``{"inputs": [(name, shape)], "outputs": [(name, shape)]}`` of the graph (fed inputs only)."""
    return {
        "inputs": [(vi.name, dims(vi)) for vi in graph_inputs(model)],
        "outputs": [(vi.name, dims(vi)) for vi in model.graph.output],
    }


def elem_type_of(model: onnx.ModelProto, name: str) -> np.dtype:
    """numpy dtype of tensor ``name`` (graph I/O, or shape inference without weights); float32 when unknown."""
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if vi.name == name and vi.type.tensor_type.elem_type:
            return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    light = onnx.ModelProto()
    light.CopyFrom(model)
    light.graph.ClearField("initializer")
    inferred = infer_shapes(light)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name == name and vi.type.tensor_type.elem_type:
            return np.dtype(helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
    return np.dtype(np.float32)


def nodes_of_type(model: onnx.ModelProto, op_type: str) -> list[onnx.NodeProto]:
    """All nodes of the main graph with operator ``op_type`` (e.g. ``"RoiAlign"``)."""
    return [n for n in model.graph.node if n.op_type == op_type]


def node_attributes(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes as Python values (bytes decoded)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def upstream_tensors(model: onnx.ModelProto, name: str) -> dict[str, int]:
    """Every activation tensor that ``name`` depends on, with its distance in nodes (``name`` itself: 0).

    Breadth-first through the producing nodes; weights (initializers) are left out.
    """
    producer = {o: node for node in model.graph.node for o in node.output}
    weights = {i.name for i in model.graph.initializer}
    dist = {name: 0}
    frontier = [name]
    while frontier:
        nxt = []
        for t in frontier:
            node = producer.get(t)
            if node is None:
                continue
            for i in node.input:
                if i and i not in weights and i not in dist:
                    dist[i] = dist[t] + 1
                    nxt.append(i)
        frontier = nxt
    return dist


def first_nodes_downstream(model: onnx.ModelProto, name: str, op_types: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes of ``op_types`` that tensor ``name`` reaches through nodes of other types only (graph order).

    Breadth-first through the consuming nodes; the walk stops at each node of ``op_types`` (it is returned,
    its outputs are not followed).
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    found, seen, frontier = {}, set(), [name]
    while frontier:
        for node in consumers.get(frontier.pop(), []):
            key = id(node)
            if node.op_type in op_types:
                found[key] = node
            elif key not in seen:
                seen.add(key)
                frontier.extend(node.output)
    order = {id(n): k for k, n in enumerate(model.graph.node)}
    return sorted(found.values(), key=lambda n: order[id(n)])
