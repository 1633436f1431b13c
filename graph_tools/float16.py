"""Float16 compute in a float32 model, with float32 kept where the caller says and at the boundary.

Written here because the standard tools fail on spliced graphs: onnxruntime's converter names its
Cast nodes after the tensor, so one tensor that feeds two blocked nodes gets two nodes of one name;
onnxconverter-common 1.16 breaks on ``Cast``.

Rules (:func:`convert_float16`):

* A node computes in float16 unless its op type is blocked (``block_ops``), its name starts with
  one of ``block_prefixes``, it is not of the
  default domain, it holds a subgraph or produces a tensor a subgraph reads, a type of its tensors
  is unknown, its op's schema at the model's opset does not admit float16 where it takes or gives
  float32 through a type parameter, or it computes only from ``keep_float32_from`` inputs and
  constants (e.g. box geometry). Positions of a fixed float32 type (``Resize`` scales) stay float32.
* A float32 initializer or ``Constant`` read only by float16 nodes is stored in float16 (values
  clipped to +-65504); one also read by float32 nodes stays float32.
* A ``Cast`` is inserted where a float tensor crosses between the two kinds of nodes, once per
  tensor and direction, with a unique name. Graph inputs and outputs stay float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graph_tools.errors import GraphError
from graph_tools.inspect import infer_shapes
from graph_tools.opset import default_opset

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
FP16_MAX: float = 65504.0
TYPED_BY_ATTRIBUTE: frozenset[str] = frozenset({
    "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike", "Multinomial", "Bernoulli",
})
"""Ops whose output type an attribute fixes (other than ``Cast``): always float32."""
_FP16 = "tensor(float16)"


@dataclass
class Float16Report:
    """What :func:`convert_float16` did: nodes per precision, casts inserted, initializers converted."""

    float16_nodes: int = 0
    float32_nodes: int = 0
    casts: int = 0
    converted_initializers: int = 0
    blocked_ops: dict[str, int] = field(default_factory=dict)
    """Op type -> number of float nodes kept in float32 (for any reason)."""


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    names: set[str] = set()
    for attr in node.attribute:
        for g in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            for sub in g.node:
                names |= set(sub.input) | _subgraph_reads(sub)
    return names


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info]
             if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}
    types.update({i.name: i.data_type for i in g.initializer})
    for node in g.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _positions(node: onnx.NodeProto, opset: int, types: dict[str, int]) -> tuple[list[bool], list[bool]] | None:
    """Which float inputs/outputs of ``node`` become float16, or None when the schema forbids it."""
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}

    def side(formals, names) -> list[bool] | None:
        flags = []
        for i, name in enumerate(names):
            if not name or types.get(name) != FLOAT or not formals:
                flags.append(False)
                continue
            type_str = formals[min(i, len(formals) - 1)].type_str
            if type_str in allowed:
                if _FP16 not in allowed[type_str]:
                    return None
                flags.append(True)
            else:
                flags.append(type_str == _FP16)  # a fixed float32 position stays float32
        return flags

    ins, outs = side(schema.inputs, node.input), side(schema.outputs, node.output)
    return None if ins is None or outs is None else (ins, outs)


def _pure_nodes(graph: onnx.GraphProto, keep_from: Iterable[str], constants: set[str]) -> set[int]:
    """Indices of nodes that compute only from ``keep_from`` inputs and constants (at least one of the former)."""
    pure_tensors, pure = set(keep_from), set()
    for idx, node in enumerate(graph.node):
        ins = [n for n in node.input if n]
        if node.op_type != "Constant" and ins and any(n in pure_tensors for n in ins) \
                and all(n in pure_tensors or n in constants for n in ins):
            pure.add(idx)
            pure_tensors |= set(node.output)
    return pure


def _classify(model, types, block_ops, keep_from, report,
              block_prefixes: tuple[str, ...] = ()) -> dict[int, tuple[list[bool], list[bool]]]:
    """``{node index: (input flags, output flags)}`` of the nodes that compute in float16."""
    graph, opset = model.graph, default_opset(model)
    constants = {i.name for i in graph.initializer} | {n.output[0] for n in graph.node if n.op_type == "Constant"}
    captured = set().union(*[_subgraph_reads(n) for n in graph.node]) if len(graph.node) else set()
    pure = _pure_nodes(graph, keep_from, constants)
    fp16: dict[int, tuple[list[bool], list[bool]]] = {}
    for idx, node in enumerate(graph.node):
        names = [n for n in [*node.input, *node.output] if n]
        is_float = any(types.get(n) == FLOAT for n in names)
        if node.op_type == "Constant" or not is_float:
            continue
        pos = None
        if (node.domain in ("", "ai.onnx") and node.op_type not in block_ops and node.op_type not in TYPED_BY_ATTRIBUTE
                and not (block_prefixes and node.name.startswith(block_prefixes))
                and idx not in pure and not _subgraph_reads(node) and not (set(node.output) & captured)
                and all(n in types for n in names)):
            pos = _positions(node, opset, types)
        if pos is None or not any(pos[1]):
            report.blocked_ops[node.op_type] = report.blocked_ops.get(node.op_type, 0) + 1
            report.float32_nodes += 1
            continue
        fp16[idx] = pos
        report.float16_nodes += 1
    return fp16


def _to_fp16_tensor(t: onnx.TensorProto) -> onnx.TensorProto:
    arr = np.clip(numpy_helper.to_array(t), -FP16_MAX, FP16_MAX).astype(np.float16)
    return numpy_helper.from_array(arr, t.name)


class _Casts:
    """Cast nodes inserted by the conversion: one per (tensor, type), unique node and tensor names."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.names = {n.name for n in graph.node} | {n for node in graph.node for n in [*node.input, *node.output]}
        self.names |= {vi.name for vi in [*graph.input, *graph.output]} | {i.name for i in graph.initializer}
        self.made: dict[tuple[str, int], str] = {}
        self.pending: list[onnx.NodeProto] = []

    def unique(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name, k = f"{base}_{k}", k + 1
        self.names.add(name)
        return name

    def get(self, tensor: str, to: int) -> str:
        key = (tensor, to)
        if key not in self.made:
            suffix = "fp16" if to == FLOAT16 else "fp32"
            out = self.unique(f"{tensor}/to_{suffix}")
            self.made[key] = out
            self.pending.append(helper.make_node("Cast", [tensor], [out], name=self.unique(f"Cast_{out}"), to=to))
        return self.made[key]


def _retype_nodes(graph, fp16, new_type) -> None:
    for idx, (_, outs) in fp16.items():
        node = graph.node[idx]
        for name, flag in zip(node.output, outs):
            if flag:
                new_type[name] = FLOAT16
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == FLOAT:
                    attr.i = FLOAT16
        for attr in node.attribute:  # ConstantOfShape's value, and the like
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                attr.t.CopyFrom(_to_fp16_tensor(attr.t))


def _needs(graph, fp16, types) -> dict[str, set[int]]:
    """Tensor -> the float types its readers need (graph outputs need float32)."""
    needs: dict[str, set[int]] = {}
    for idx, node in enumerate(graph.node):
        flags = fp16[idx][0] if idx in fp16 else [False] * len(node.input)
        for name, flag in zip(node.input, flags):
            if name and types.get(name) == FLOAT:
                needs.setdefault(name, set()).add(FLOAT16 if flag else FLOAT)
        for name in _subgraph_reads(node):
            if types.get(name) == FLOAT:
                needs.setdefault(name, set()).add(FLOAT)
    for vi in graph.output:
        if types.get(vi.name) == FLOAT:
            needs.setdefault(vi.name, set()).add(FLOAT)
    return needs


def _convert_constants(graph, needs, new_type, report) -> None:
    for init in graph.initializer:
        if init.data_type == FLOAT and needs.get(init.name) == {FLOAT16}:
            init.CopyFrom(_to_fp16_tensor(init))
            new_type[init.name] = FLOAT16
            report.converted_initializers += 1
    for node in graph.node:
        if node.op_type == "Constant" and needs.get(node.output[0]) == {FLOAT16}:
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == FLOAT:
                    attr.t.CopyFrom(_to_fp16_tensor(attr.t))
                    new_type[node.output[0]] = FLOAT16
                    report.converted_initializers += 1


def _rewire(graph, fp16, types, new_type, casts: _Casts) -> list[onnx.NodeProto]:
    """The node list with Casts before the readers that need the other float type."""
    nodes: list[onnx.NodeProto] = []
    for idx, node in enumerate(graph.node):
        flags = fp16[idx][0] if idx in fp16 else [False] * len(node.input)
        for i, (name, flag) in enumerate(zip(node.input, flags)):
            if not name or types.get(name) != FLOAT:
                continue
            want = FLOAT16 if flag else FLOAT
            if new_type.get(name, FLOAT) != want:
                node.input[i] = casts.get(name, want)
        nodes += casts.pending
        casts.pending = []
        nodes.append(node)
    return nodes


def _float32_outputs(graph, nodes: list[onnx.NodeProto], new_type, casts: _Casts) -> None:
    """Graph outputs that came out float16: the producer writes ``<name>/fp16``, a Cast gives ``<name>``."""
    for vi in graph.output:
        if new_type.get(vi.name) != FLOAT16:
            continue
        inner = casts.unique(f"{vi.name}/fp16")
        for node in nodes:
            node.output[:] = [inner if n == vi.name else n for n in node.output]
            node.input[:] = [inner if n == vi.name else n for n in node.input]
        nodes.append(helper.make_node("Cast", [inner], [vi.name], name=casts.unique(f"Cast_{vi.name}"), to=FLOAT))
        casts.made[(inner, FLOAT)] = vi.name


def convert_float16(model: onnx.ModelProto, block_ops: Sequence[str] = (), keep_float32_from: Sequence[str] = (),
                    block_prefixes: Sequence[str] = ()) -> tuple[onnx.ModelProto, Float16Report]:
    """A copy of ``model`` that computes in float16 where the module rules allow; inputs and outputs
    keep their float32 type. Raises :class:`GraphError` when the result fails ``onnx.checker``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    types = _elem_types(infer_shapes(out))
    graph, report = out.graph, Float16Report()
    fp16 = _classify(out, types, set(block_ops), keep_float32_from, report, tuple(block_prefixes))
    new_type: dict[str, int] = {}
    _retype_nodes(graph, fp16, new_type)
    _convert_constants(graph, _needs(graph, fp16, types), new_type, report)
    casts = _Casts(graph)
    nodes = _rewire(graph, fp16, types, new_type, casts)
    _float32_outputs(graph, nodes, new_type, casts)
    report.casts = len(casts.made)
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.value_info[:]
    try:
        onnx.checker.check_model(out)
        onnx.shape_inference.infer_shapes(out, strict_mode=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise GraphError(f"float16 conversion produced an invalid model: {str(exc).splitlines()[0][:300]}") from exc
    return out, report
