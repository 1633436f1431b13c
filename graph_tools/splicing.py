"""Splice two models into one: outputs of the first feed inputs of the second.

The merge is ``onnx.compose.merge_models`` with the second model's names prefixed
(``onnx.compose.add_prefix``) so nothing collides. Inputs of the second model can be *shared* with
inputs of the first (the same value feeds both, so a detector runs once), and tensors get public
names in the result. Public names already used inside the first model are moved aside under
``clash_prefix``. Both models must already import the same ``ai.onnx`` opset (:mod:`graph_tools.opset`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import onnx
from onnx import compose

from graph_tools.errors import GraphError
from graph_tools.inspect import dims, graph_inputs, upstream_tensors
from graph_tools.opset import choose_ir_version, default_opset


def rename_tensors(graph: onnx.GraphProto, mapping: Mapping[str, str]) -> None:
    """Rename tensors in place: node inputs/outputs (subgraphs too), graph I/O, value_info, initializers."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in mapping:
                node.input[i] = mapping[name]
        for i, name in enumerate(node.output):
            if name in mapping:
                node.output[i] = mapping[name]
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                rename_tensors(attr.g, mapping)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    rename_tensors(sub, mapping)
    for coll in (graph.input, graph.output, graph.value_info, graph.initializer, graph.sparse_initializer):
        for item in coll:
            target = item.values if isinstance(item, onnx.SparseTensorProto) else item
            if target.name in mapping:
                target.name = mapping[target.name]


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name used in the main graph (node I/O, graph I/O, initializers)."""
    names = {n for node in graph.node for n in list(node.input) + list(node.output) if n}
    names |= {vi.name for vi in list(graph.input) + list(graph.output)}
    names |= {i.name for i in graph.initializer}
    return names


def check_same_input(first: onnx.ValueInfoProto, second: onnx.ValueInfoProto) -> None:
    """GraphError unless two graph inputs have the same element type and the same dims after dim 0."""
    a, b = first.type.tensor_type, second.type.tensor_type
    if a.elem_type != b.elem_type:
        raise GraphError(f"input {first.name!r} is {onnx.helper.tensor_dtype_to_string(a.elem_type)} but "
                         f"{second.name!r} is {onnx.helper.tensor_dtype_to_string(b.elem_type)}")
    if dims(first)[1:] != dims(second)[1:]:
        raise GraphError(f"input {first.name!r} has shape {dims(first)} but {second.name!r} has {dims(second)}")


def pin_batch(graph: onnx.GraphProto, name: str, size: int = 1) -> None:
    """Set dim 0 of graph input ``name`` to ``size``."""
    for vi in graph.input:
        dim = vi.type.tensor_type.shape.dim
        if vi.name == name and len(dim) and not (dim[0].HasField("dim_value") and dim[0].dim_value == size):
            dim[0].Clear()
            dim[0].dim_value = size


def order_inputs(graph: onnx.GraphProto, order: Sequence[str]) -> None:
    """Drop repeated graph inputs (keep the first) and list ``order`` first."""
    seen: dict[str, onnx.ValueInfoProto] = {}
    for vi in graph.input:
        if vi.name not in seen:
            kept = onnx.ValueInfoProto()
            kept.CopyFrom(vi)
            seen[vi.name] = kept
    ranked = [seen[n] for n in order if n in seen] + [vi for n, vi in seen.items() if n not in order]
    del graph.input[:]
    graph.input.extend(ranked)


def _prepare_first(first: onnx.ModelProto, public: set[str], rename_inputs: Mapping[str, str],
                   clash_prefix: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``first`` with its inputs renamed and other uses of public names moved aside."""
    out = onnx.ModelProto()
    out.CopyFrom(first)
    mapping = {n: clash_prefix + n for n in tensor_names(out.graph) & public if n not in rename_inputs}
    mapping.update(rename_inputs)
    rename_tensors(out.graph, mapping)
    return out, mapping


def splice(
    first: onnx.ModelProto,
    second: onnx.ModelProto,
    connect: Mapping[str, str],
    *,
    rename_first_inputs: Mapping[str, str] | None = None,
    share_inputs: Mapping[str, str] | None = None,
    public: Mapping[str, str] | None = None,
    prefix: str = "second/",
    clash_prefix: str = "first/",
    pin_batch_of: Sequence[str] = (),
    input_order: Sequence[str] = (),
    producer_name: str = "graph_tools",
) -> onnx.ModelProto:
    """One model computing ``second`` on outputs of ``first``.

    Args:
        connect: ``{output of first: input of second}`` (names as in the given models).
        rename_first_inputs: ``{input of first: its name in the result}``.
        share_inputs: ``{input of second: input of first (result name)}``; the same value feeds
            both (element type and dims after dim 0 must agree).
        public: ``{tensor of second: its name in the result}`` (its other tensors keep ``prefix``).
        pin_batch_of: result inputs whose dim 0 is set to 1.
        input_order: result inputs listed first, in this order.

    The result has no ``metadata_props``; its IR version comes from :func:`choose_ir_version`.
    """
    if default_opset(first) != default_opset(second):
        raise GraphError(f"opset {default_opset(first)} of the first model != opset {default_opset(second)} "
                         "of the second; convert one first")
    outputs = {o.name for o in first.graph.output}
    missing = [t for t in connect if t not in outputs]
    if missing:
        raise GraphError(f"{', '.join(map(repr, missing))} not among the outputs of the first model")
    public, share_inputs = dict(public or {}), dict(share_inputs or {})
    names_out = set(public.values()) | set((rename_first_inputs or {}).values())
    first, moved = _prepare_first(first, names_out, dict(rename_first_inputs or {}), clash_prefix)
    second = compose.add_prefix(second, prefix)
    first_in = {vi.name: vi for vi in graph_inputs(first)}
    second_in = {vi.name: vi for vi in graph_inputs(second)}
    for name, target in share_inputs.items():
        if prefix + name in second_in and target in first_in:
            check_same_input(first_in[target], second_in[prefix + name])

    ir = choose_ir_version(first, second)
    first.ir_version = second.ir_version = ir
    del first.metadata_props[:]
    del second.metadata_props[:]
    io_map = [(moved.get(src, src), prefix + dst) for src, dst in connect.items()]
    merged = compose.merge_models(first, second, io_map=io_map, producer_name=producer_name)
    renames = {prefix + k: v for k, v in share_inputs.items()}
    renames.update({prefix + k: v for k, v in public.items()})
    rename_tensors(merged.graph, renames)
    order_inputs(merged.graph, input_order)
    for name in pin_batch_of:
        pin_batch(merged.graph, name)
    merged.ir_version = ir
    return merged


def feed_input(model: onnx.ModelProto, input_name: str, pre: onnx.ModelProto, pre_output: str, *,
               prefix: str = "pre/", keep_as_output: bool = False) -> onnx.ModelProto:
    """``model`` with its graph input ``input_name`` computed by ``pre`` (e.g. preprocessing in front of a detector).

    ``pre``'s inputs become inputs of the result (names kept; they must not be used in ``model``),
    its other names get ``prefix``; its output ``pre_output`` (named ``prefix + pre_output`` in the
    result) replaces ``input_name`` everywhere. With ``keep_as_output`` that tensor is also a graph
    output (to feed another model spliced behind). Both must import the same ``ai.onnx`` opset.
    """
    if default_opset(model) != default_opset(pre):
        raise GraphError(f"opset {default_opset(pre)} of the input model != opset {default_opset(model)}; convert one first")
    inputs = {vi.name: vi for vi in graph_inputs(model)}
    if input_name not in inputs:
        raise GraphError(f"{input_name!r} is not an input of the model; inputs: {', '.join(inputs)}")
    if pre_output not in {o.name for o in pre.graph.output}:
        raise GraphError(f"{pre_output!r} is not an output of the input model")
    clash = {vi.name for vi in pre.graph.input} & tensor_names(model.graph)
    if clash:
        raise GraphError(f"input(s) {', '.join(sorted(clash))} of the input model are already used in the model")
    pre = compose.add_prefix(pre, prefix, rename_inputs=False)
    new_name = prefix + pre_output
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rename_tensors(out.graph, {input_name: new_name})
    kept = [vi for vi in out.graph.input if vi.name != new_name]
    del out.graph.input[:]
    out.graph.input.extend([*pre.graph.input, *kept])
    nodes = [*pre.graph.node, *out.graph.node]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(pre.graph.initializer)
    out.graph.value_info.extend(pre.graph.value_info)
    if keep_as_output:
        out.graph.output.extend([vi for vi in pre.graph.output if vi.name == new_name])
    out.ir_version = max(out.ir_version, pre.ir_version)
    return out


def _reads(node: onnx.NodeProto) -> set[str]:
    """Tensor names a node reads, outer-scope names its subgraphs read included."""
    names = {n for n in node.input if n}
    for attr in node.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            inner = {o for n in sub.node for o in n.output} | {i.name for i in sub.input} | {i.name for i in sub.initializer}
            names |= {n for s in sub.node for n in _reads(s) if n not in inner}
            names |= {o.name for o in sub.output if o.name not in inner}
    return names


def toposort(graph: onnx.GraphProto) -> None:
    """Order ``graph.node`` so every node comes after the producers of what it reads (stable: an
    already ordered graph is unchanged). GraphError when the nodes form a cycle."""
    producer = {o: i for i, node in enumerate(graph.node) for o in node.output if o}
    deps = [{producer[n] for n in _reads(node) if n in producer} for node in graph.node]
    users: dict[int, list[int]] = {}
    for i, ds in enumerate(deps):
        for d in ds:
            users.setdefault(d, []).append(i)
    waiting = [len(ds) for ds in deps]
    ready = sorted(i for i, w in enumerate(waiting) if w == 0)
    order: list[int] = []
    while ready:
        i = ready.pop(0)
        order.append(i)
        for u in users.get(i, []):
            waiting[u] -= 1
            if waiting[u] == 0:
                ready.append(u)
        ready.sort()
    if len(order) != len(graph.node):
        raise GraphError(f"the graph has a cycle through {len(graph.node) - len(order)} node(s)")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def loop_back(model: onnx.ModelProto, tensor: str, input_name: str) -> onnx.ModelProto:
    """``model`` with its graph input ``input_name`` computed inside it: the tensor ``tensor`` (which
    must not depend on that input) takes the input's name and feeds every reader; the input is gone
    and ``tensor`` is no longer a graph output. E.g. boxes that the model finds itself feeding the
    part that took them as an input. Nodes are re-ordered topologically."""
    inputs = {vi.name for vi in model.graph.input}
    if input_name not in inputs:
        raise GraphError(f"{input_name!r} is not an input of the model")
    if tensor not in {o for node in model.graph.node for o in node.output}:
        raise GraphError(f"{tensor!r} is not computed by a node of the model")
    if input_name in upstream_tensors(model, tensor):
        raise GraphError(f"{tensor!r} depends on {input_name!r}: feeding it back would make a cycle")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept_in = [vi for vi in graph.input if vi.name != input_name]
    kept_out = [vi for vi in graph.output if vi.name != tensor]
    del graph.input[:], graph.output[:]
    graph.input.extend(kept_in)
    graph.output.extend(kept_out)
    infos = [vi for vi in graph.value_info if vi.name != input_name]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    rename_tensors(graph, {tensor: input_name})
    toposort(graph)
    return out
