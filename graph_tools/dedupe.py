"""Common subexpression elimination: compute what two copies of the same subgraph compute once.

When two models built from the same source are combined (for instance a detector cut at two
different tensors, each converted to the same opset), the combined graph holds the shared part
twice under different names. :func:`merge_duplicate_nodes` merges initializers with equal contents
and then, in topological order, every node whose operator, attributes and (merged) inputs equal
those of an earlier node; the later node's outputs are renamed to the earlier node's everywhere.
Names do not matter, only structure, so the result computes exactly what the input computed.

Never merged: nodes with subgraph attributes, random operators, nodes without outputs, and a node
one of whose outputs is a graph output (the name must stay).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import numpy_helper

from graph_tools.splicing import rename_tensors

RANDOM_OPS: frozenset[str] = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout",
})
"""Operators whose two equal-looking nodes may compute different values (Dropout: training mode)."""


@dataclass
class DedupeReport:
    """What :func:`merge_duplicate_nodes` merged."""

    nodes_removed: int
    initializers_removed: int


def _initializer_aliases(graph: onnx.GraphProto) -> dict[str, str]:
    """``{name: name of the first initializer with the same type, shape and contents}`` for duplicates."""
    inputs = {vi.name for vi in graph.input}
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    for init in graph.initializer:
        if init.name in inputs or init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        key = (init.data_type, tuple(init.dims), numpy_helper.to_array(init).tobytes())
        if key in first:
            alias[init.name] = first[key]
        else:
            first[key] = init.name
    return alias


def _node_key(node: onnx.NodeProto, inputs: list[str]) -> tuple | None:
    """What makes two nodes compute the same, or ``None`` for a node never merged."""
    if node.op_type in RANDOM_OPS or not node.output or any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return None
    attrs = tuple(sorted((a.name, a.SerializeToString(deterministic=True)) for a in node.attribute))
    return node.domain, node.op_type, tuple(inputs), attrs, len(node.output)


def _used_names(nodes) -> set[str]:
    """Every tensor name read by ``nodes``, inside their subgraphs too."""
    used = set()
    for node in nodes:
        used.update(node.input)
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                used |= _used_names(sub.node) | {o.name for o in sub.output}
    return used


def merge_duplicate_nodes(model: onnx.ModelProto) -> tuple[onnx.ModelProto, DedupeReport]:
    """A copy of ``model`` with duplicate initializers and nodes merged (see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    rename = _initializer_aliases(graph)
    outputs = {o.name for o in graph.output}
    seen: dict[tuple, list[str]] = {}
    kept: list[onnx.NodeProto] = []
    for node in graph.node:
        inputs = [rename.get(name, name) for name in node.input]
        del node.input[:]
        node.input.extend(inputs)
        key = _node_key(node, inputs)
        if key is not None and key in seen and not outputs & set(node.output):
            rename.update({mine: theirs for mine, theirs in zip(node.output, seen[key]) if mine})
            continue
        if key is not None and key not in seen:
            seen[key] = list(node.output)
        kept.append(node)
    removed = len(graph.node) - len(kept)
    del graph.node[:]
    graph.node.extend(kept)
    for node in kept:  # outer-scope names used inside subgraphs
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                rename_tensors(sub, rename)
    used = _used_names(kept) | outputs | {vi.name for vi in graph.input}
    inits = [i for i in graph.initializer if i.name in used]
    dropped = len(graph.initializer) - len(inits)
    del graph.initializer[:]
    graph.initializer.extend(inits)
    produced = {name for node in kept for name in node.output}
    infos = [vi for vi in graph.value_info if vi.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return out, DedupeReport(removed, dropped)
