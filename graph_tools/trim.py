"""Trim a detector at a named tensor so that tensor becomes the (first) output.

Everything that no longer feeds the kept outputs is removed (onnx-graphsurgeon ``cleanup``);
opset imports, IR version, other domains, producer and metadata are kept as they were.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from graph_tools.inspect import _dims, require_tensor, tensor_shapes
from roiseg.conventions import DEFAULT_FEATURE_TENSOR


def trim_at_tensor(
    model: onnx.ModelProto,
    tensor: str = DEFAULT_FEATURE_TENSOR,
    keep_original_outputs: bool = False,
) -> onnx.ModelProto:
    """Return a new model whose outputs are ``[tensor]`` (plus the original outputs if asked).

    Raises :class:`roiseg.errors.InputError` with the nearest tensor names when ``tensor`` is absent.
    Shapes of all remaining tensors are inferred; the kept tensor's shape is written on the output.
    """
    require_tensor(model, tensor)
    shapes = tensor_shapes(model)
    graph = gs.import_onnx(model)
    tensors = graph.tensors()
    feat = tensors[tensor]
    if feat.dtype is None:
        feat.dtype = _elem_type_of(model, tensor)
    if feat.shape is None and shapes.get(tensor) is not None:
        feat.shape = shapes[tensor]
    outputs = [feat]
    if keep_original_outputs:
        outputs += [o for o in graph.outputs if o.name != tensor]
    graph.outputs = outputs
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    _restore_model_fields(model, out)
    _write_output_shapes(out, shapes)
    return out


def _elem_type_of(model: onnx.ModelProto, name: str):
    """Element type of tensor ``name`` from shape inference (float32 when unknown)."""
    import numpy as np

    from graph_tools.inspect import infer_shapes

    light = onnx.ModelProto()
    light.CopyFrom(model)
    light.graph.ClearField("initializer")
    inferred = infer_shapes(light)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        if vi.name == name and vi.type.tensor_type.elem_type:
            return onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
    return np.float32


def _restore_model_fields(src: onnx.ModelProto, dst: onnx.ModelProto) -> None:
    """Copy IR version, opset imports (all domains), producer and metadata from ``src``."""
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
        if not _dims(out) and shapes.get(out.name):
            dims = shapes[out.name]
            tt = out.type.tensor_type
            tt.shape.Clear()
            for d in dims:
                if isinstance(d, int):
                    tt.shape.dim.add().dim_value = d
                else:
                    tt.shape.dim.add().dim_param = str(d)
