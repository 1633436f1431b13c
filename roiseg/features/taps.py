"""Extra detector taps: which tensors besides the primary one a head reads, chosen by name or ``auto``.

``auto`` picks, from the graph alone, for each of the strides in :data:`AUTO_STRIDES` the tensor
nearest upstream of the primary tensor (fewest nodes between them; then more channels; then name)
whose shape is ``[1, C, H / s, W / s]`` for the detector input ``(H, W)``: on YOLO-style detectors
the higher-resolution backbone/neck map that feeds the stride-8 output, and the stride-16 map
upsampled into it. Works on any detector, generic tensor names included.
"""

from __future__ import annotations

from typing import Sequence

import onnx

from graph_tools import require_tensor, tensor_shapes, upstream_tensors
from roiseg.errors import InputError, graph_errors

AUTO: str = "auto"
AUTO_STRIDES: tuple[int, ...] = (4, 16)
"""Strides (input pixels per cell) ``auto`` looks for."""


def tensor_stride(shape: Sequence | None, input_hw: tuple[int, int]) -> int | None:
    """Stride of a ``[1, C, h, w]`` tensor for input ``(H, W)`` when ``H / h == W / w`` is an integer, else None."""
    if shape is None or len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
        return None
    (h_in, w_in), h, w = input_hw, int(shape[2]), int(shape[3])
    if h_in % h or w_in % w or h_in // h != w_in // w:
        return None
    return h_in // h


def auto_extra_tensors(model: onnx.ModelProto, primary: str, input_hw: tuple[int, int],
                       strides: Sequence[int] = AUTO_STRIDES) -> list[str]:
    """The tensor nearest upstream of ``primary`` at each stride of ``strides`` (module docstring).

    Strides with no such tensor are left out (logged by the caller through the returned list).
    """
    shapes = tensor_shapes(model)
    upstream = upstream_tensors(model, primary)
    chosen = []
    for stride in strides:
        candidates = [(dist, -int(shapes[t][1]), t) for t, dist in upstream.items()
                      if t != primary and tensor_stride(shapes.get(t), input_hw) == stride]
        if candidates:
            chosen.append(min(candidates)[2])
    return chosen


def resolve_extra_tensors(model: onnx.ModelProto, primary: str, extra: str | Sequence[str],
                          input_hw: tuple[int, int], source: str = "detector") -> list[str]:
    """``extra`` as tensor names: ``"auto"`` resolved, names checked (InputError with nearest names)."""
    if isinstance(extra, str):
        if extra.strip().lower() != AUTO:
            raise InputError(f"extra tensors must be a list of tensor names or {AUTO!r}, got {extra!r}")
        return auto_extra_tensors(model, primary, input_hw)
    names = [str(t) for t in extra]
    if primary in names:
        raise InputError(f"{primary!r} is the primary tensor and one of the extra taps {names}: an extra tap is read "
                         "beside the primary, give the primary tensor the head reads first")
    if len(set(names)) != len(names):
        raise InputError(f"extra tensors {names} name a tensor twice")
    with graph_errors():
        for name in names:
            require_tensor(model, name, source)
    return names
