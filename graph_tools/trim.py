"""Trim a model at named tensors so they become its (first) outputs.

Everything that no longer feeds the kept outputs is removed (onnx-graphsurgeon ``cleanup``);
opset imports, IR version, other domains, producer and metadata are kept as they were.
"""

from __future__ import annotations

from typing import Sequence

import onnx

from graph_tools.inspect import dims, elem_type_of, require_tensor, tensor_shapes


def trim_at_tensor(
    model: onnx.ModelProto,
    tensors: str | Sequence[str],
    keep_original_outputs: bool = False,
) -> onnx.ModelProto:
    """A new model whose outputs are ``tensors`` in that order (then the original outputs if asked).

    Raises :class:`graph_tools.errors.GraphError` with the nearest tensor names when one is absent.
    The kept tensors' inferred shapes and element types are written on the outputs.
    """
    import onnx_graphsurgeon as gs  # imported here: running a model (graph_tools.create_session) needs none of it

    names = [tensors] if isinstance(tensors, str) else list(tensors)
    for name in names:
        require_tensor(model, name)
    shapes = tensor_shapes(model)
    graph = gs.import_onnx(model)
    available = graph.tensors()
    outputs = []
    for name in names:
        tensor = available[name]
        if tensor.dtype is None:
            tensor.dtype = elem_type_of(model, name)
        if tensor.shape is None and shapes.get(name) is not None:
            tensor.shape = shapes[name]
        outputs.append(tensor)
    if keep_original_outputs:
        outputs += [o for o in graph.outputs if o.name not in names]
    graph.outputs = outputs
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    copy_model_fields(model, out)
    _write_output_shapes(out, shapes)
    return out


def copy_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """Copy IR version, opset imports (all domains), producer, metadata and functions from ``src``."""
    dst.ir_version = src.ir_version
    del dst.opset_import[:]
    dst.opset_import.extend(src.opset_import)
    dst.producer_name = src.producer_name
    dst.producer_version = src.producer_version
    dst.domain = src.domain
    dst.model_version = src.model_version
    del dst.metadata_props[:]
    dst.metadata_props.extend(src.metadata_props)
    del dst.functions[:]
    dst.functions.extend(src.functions)


def _write_output_shapes(model: onnx.ModelProto, shapes: dict) -> None:
    for out in model.graph.output:
        if not dims(out) and shapes.get(out.name):
            tt = out.type.tensor_type
            tt.shape.Clear()
            for d in shapes[out.name]:
                if isinstance(d, int):
                    tt.shape.dim.add().dim_value = d
                else:
                    tt.shape.dim.add().dim_param = str(d)
