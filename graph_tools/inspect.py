"""Loading ONNX models with clear errors, and finding tensors by name.

Shapes are reported as lists of ints (static dims) or strings (symbolic dims, ``"?"`` unknown).
"""

from __future__ import annotations

import difflib
import hashlib
from pathlib import Path
from typing import Union

import onnx
from google.protobuf.message import DecodeError

from roiseg.errors import InputError

Dim = Union[int, str]


def load_model(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file (external data included); raise :class:`InputError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"ONNX model not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=load_external_data)
    except (DecodeError, RuntimeError, ValueError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise InputError(f"not a readable ONNX model: {p} ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not model.graph.node and not model.graph.output:
        raise InputError(f"not an ONNX model (empty graph): {p}")
    return model


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def opset_version(model: onnx.ModelProto, domain: str = "") -> int:
    """The model's opset for ``domain`` (``""`` = ``ai.onnx``)."""
    for imp in model.opset_import:
        if imp.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(imp.version)
    raise InputError(f"model imports no opset for domain {domain!r}")


def _dims(vi: onnx.ValueInfoProto) -> list[Dim]:
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
        shapes[vi.name] = _dims(vi)
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
    """Raise :class:`InputError` listing the nearest candidates when ``name`` is not a tensor of the graph."""
    produced = {o for node in model.graph.node for o in node.output}
    produced |= {i.name for i in model.graph.input}
    if name in produced:
        return
    near = nearest_tensors(model, name)
    where = f" in {model_path}" if model_path else ""
    listing = "; ".join(f"{t} {s if s is not None else '[?]'}" for t, s in near)
    raise InputError(f"tensor {name!r} not found{where}; nearest candidates: {listing}")


def describe_io(model: onnx.ModelProto) -> dict[str, list[tuple[str, list[Dim]]]]:
    """``{"inputs": [(name, shape)], "outputs": [(name, shape)]}`` of the graph."""
    inits = {i.name for i in model.graph.initializer}
    return {
        "inputs": [(vi.name, _dims(vi)) for vi in model.graph.input if vi.name not in inits],
        "outputs": [(vi.name, _dims(vi)) for vi in model.graph.output],
    }
