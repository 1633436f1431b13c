"""Splice a trimmed detector and an exported head into one model: ``images`` + ``rois`` -> ``masks``.

The merge is ``onnx.compose.merge_models`` with the head's names prefixed (``roiseg_head/``,
``onnx.compose.add_prefix``) so nothing collides, and the detector's feature tensor wired to the
head's ``features`` input. The head's ``images`` input (detail variant) is then renamed onto the
detector's image input, so the model has one shared image input and exactly one detector path.
Finally the head's ``rois``/``masks`` get their public names back. Both models must already import
the same ``ai.onnx`` opset (:mod:`graph_tools.opset`).
"""

from __future__ import annotations

import onnx
from onnx import compose

from graph_tools.inspect import _dims
from graph_tools.opset import choose_ir_version, default_opset
from roiseg.conventions import DEFAULT_IMAGE_INPUT, FUSED_MASKS_OUTPUT, FUSED_ROIS_INPUT, HEAD_FEATURES_INPUT
from roiseg.errors import InputError

HEAD_PREFIX: str = "roiseg_head/"
"""Prefix of every node, tensor and initializer name that comes from the head."""
DETECTOR_PREFIX: str = "detector/"
"""Prefix given to a detector tensor whose name collides with a public name of the fused model."""


# --------------------------------------------------------------------------------------------
# Renaming
# --------------------------------------------------------------------------------------------
def rename_tensors(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename tensors in place: node inputs/outputs (subgraphs too), graph I/O, value_info, initializers."""

    def _graph(g: onnx.GraphProto) -> None:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]
            for i, name in enumerate(node.output):
                if name in mapping:
                    node.output[i] = mapping[name]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    _graph(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sub in attr.graphs:
                        _graph(sub)
        for coll in (g.input, g.output, g.value_info, g.initializer, g.sparse_initializer):
            for item in coll:
                target = item.values if isinstance(item, onnx.SparseTensorProto) else item
                if target.name in mapping:
                    target.name = mapping[target.name]

    _graph(graph)


def tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name used in the main graph (node I/O, graph I/O, initializers)."""
    names = {n for node in graph.node for n in list(node.input) + list(node.output) if n}
    names |= {vi.name for vi in list(graph.input) + list(graph.output)}
    names |= {i.name for i in graph.initializer}
    return names


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers (the values a caller feeds)."""
    weights = {i.name for i in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in weights]


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def _image_input(detector: onnx.ModelProto) -> onnx.ValueInfoProto:
    inputs = graph_inputs(detector)
    if len(inputs) != 1:
        names = ", ".join(vi.name for vi in inputs)
        raise InputError(f"the trimmed detector has {len(inputs)} inputs ({names}); expected one image input")
    return inputs[0]


def _check_image_inputs(det_vi: onnx.ValueInfoProto, head_vi: onnx.ValueInfoProto) -> None:
    det_t, head_t = det_vi.type.tensor_type, head_vi.type.tensor_type
    if det_t.elem_type != head_t.elem_type:
        det_name = onnx.helper.tensor_dtype_to_string(det_t.elem_type)
        head_name = onnx.helper.tensor_dtype_to_string(head_t.elem_type)
        raise InputError(f"detector input {det_vi.name!r} is {det_name} but the head's image input is {head_name}")
    det_dims, head_dims = _dims(det_vi), _dims(head_vi)
    if det_dims[1:] != head_dims[1:]:
        raise InputError(
            f"detector input {det_vi.name!r} has shape {det_dims} but the head was built for images {head_dims}"
        )


# --------------------------------------------------------------------------------------------
# Splice
# --------------------------------------------------------------------------------------------
def splice(detector: onnx.ModelProto, head: onnx.ModelProto, feature_tensor: str) -> onnx.ModelProto:
    """One model from a trimmed detector and an exported head (see :mod:`graph_tools.export`).

    Args:
        detector: a detector whose outputs include ``feature_tensor`` and whose only input is the image.
        head: inputs ``features``, ``rois`` (and ``images``), output ``masks``.
        feature_tensor: the detector tensor fed to the head's ``features``.

    Returns:
        A model with inputs ``images`` (the detector's image input, renamed to ``images`` if needed,
        batch pinned to 1) and ``rois``, and the one output ``masks``. IR version from :func:`choose_ir_version`;
        ``metadata_props`` empty (the caller writes them, :mod:`graph_tools.metadata`).
    """
    if default_opset(detector) != default_opset(head):
        raise ValueError(
            f"detector opset {default_opset(detector)} != head opset {default_opset(head)}; reconcile first"
        )
    if feature_tensor not in {o.name for o in detector.graph.output}:
        raise ValueError(f"{feature_tensor!r} is not an output of the detector graph")
    det = onnx.ModelProto()
    det.CopyFrom(detector)
    image_vi = _image_input(det)

    # Public names must be free in the detector graph; move colliding detector tensors aside.
    public = {DEFAULT_IMAGE_INPUT, FUSED_ROIS_INPUT, FUSED_MASKS_OUTPUT}
    clashes = {n: DETECTOR_PREFIX + n for n in tensor_names(det.graph) & public if n != image_vi.name}
    if image_vi.name != DEFAULT_IMAGE_INPUT:
        clashes[image_vi.name] = DEFAULT_IMAGE_INPUT
    feature_name = clashes.get(feature_tensor, feature_tensor)
    rename_tensors(det.graph, clashes)
    image_vi = _image_input(det)

    head_p = compose.add_prefix(head, HEAD_PREFIX)
    head_inputs = {vi.name: vi for vi in graph_inputs(head_p)}
    head_images = HEAD_PREFIX + DEFAULT_IMAGE_INPUT
    if head_images in head_inputs:
        _check_image_inputs(image_vi, head_inputs[head_images])

    ir = choose_ir_version(det, head_p)
    det.ir_version = ir
    head_p.ir_version = ir
    del det.metadata_props[:]
    del head_p.metadata_props[:]
    merged = compose.merge_models(
        det, head_p, io_map=[(feature_name, HEAD_PREFIX + HEAD_FEATURES_INPUT)], producer_name="roiseg",
    )
    rename_tensors(merged.graph, {
        head_images: DEFAULT_IMAGE_INPUT,
        HEAD_PREFIX + FUSED_ROIS_INPUT: FUSED_ROIS_INPUT,
        HEAD_PREFIX + FUSED_MASKS_OUTPUT: FUSED_MASKS_OUTPUT,
    })
    _dedupe_inputs(merged.graph, order=(DEFAULT_IMAGE_INPUT, FUSED_ROIS_INPUT))
    _pin_batch(merged.graph, DEFAULT_IMAGE_INPUT)
    merged.ir_version = ir
    return merged


def _pin_batch(graph: onnx.GraphProto, name: str) -> None:
    """Set dim 0 of graph input ``name`` to 1: every ROI refers to the one image (batch index 0)."""
    for vi in graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name == name and len(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value == 1):
            dims[0].Clear()
            dims[0].dim_value = 1


def _dedupe_inputs(graph: onnx.GraphProto, order: tuple[str, ...]) -> None:
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
