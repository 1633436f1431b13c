"""The batch dimension of a static-batch model: make it dynamic, and check that this is sound.

Exporters often write a static batch of 1 (the reference detector's ``images`` is [1, 3, 640, 640]).
Renaming dim 0 of the inputs and outputs to a symbol lets onnxruntime run any batch, *provided*
nothing inside the graph hard-codes the batch (a ``Reshape`` to ``[1, -1]``, say). That cannot be
told reliably from the graph, so callers compare a batched run with one-by-one runs
(:func:`batch_consistent`) and fall back to looping when they differ.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx

DEFAULT_BATCH_DIM: str = "batch"


def make_batch_dynamic(model: onnx.ModelProto, dim_name: str = DEFAULT_BATCH_DIM) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs and outputs have a symbolic dim 0 named ``dim_name``.

    Initializers are untouched. Intermediate ``value_info`` shapes are dropped (they would still
    state batch 1); onnxruntime infers them again when it loads the model.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    weights = {i.name for i in out.graph.initializer}
    for vi in list(out.graph.input) + list(out.graph.output):
        if vi.name in weights or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        if len(shape.dim) == 0:
            continue
        shape.dim[0].Clear()
        shape.dim[0].dim_param = dim_name
    out.graph.ClearField("value_info")
    return out


def batch_consistent(
    batched: np.ndarray, singles: Sequence[np.ndarray], rtol: float = 1e-3, atol: float = 1e-5
) -> bool:
    """True when a batched output [B, ...] equals the B one-by-one outputs [1, ...] stacked.

    The tolerance is relative to the largest magnitude in the reference (batched kernels may
    accumulate in another order): ``max|a - b| <= atol + rtol * max|b|``.
    """
    ref = np.concatenate([np.asarray(s) for s in singles], axis=0)
    got = np.asarray(batched)
    if got.shape != ref.shape:
        return False
    if not (np.isfinite(got).all() and np.isfinite(ref).all()):
        return bool(np.array_equal(got, ref, equal_nan=True))
    err = float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return err <= atol + rtol * scale
