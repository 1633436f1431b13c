"""``roiseg fuse --fp16``: which parts of the fused model may compute in float16, and how far it moves.

The generic conversion is :func:`graph_tools.convert_float16`; roiseg chooses what stays float32:

* quantization ops (:data:`QUANTIZATION_OPS`): an int8 detector's scales and zero points are float32 by
  their schema, and its ``DynamicQuantizeLinear`` takes float32 only;
* ``RoiAlign``: box coordinates are input pixels (up to the image size; float16 steps by 0.5 px above
  512), and every node computed from ``rois`` alone (sanitising, the paste's interpolation matrices,
  the inside-the-box masks): ``keep_float32_from=["rois"]``;
* normalisations (``InstanceNormalization``, the head's GroupNorm; ``LayerNormalization``): their
  variance overflows float16 for activations above ~256.

* an instance model's detection post-processing (nodes under ``conventions.POST_PREFIX``: decoding,
  thresholds, ``NonMaxSuppression``, the box arithmetic); its ROIs are the internal tensor ``rois``.

Everything else (the detector's convolutions, the head's convolutions, the paste's matrix products
and the softmax) computes in float16; inputs and outputs stay float32.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx

import graph_tools as gt
from roiseg.conventions import FUSED_MASKS_OUTPUT, FUSED_ROIS_INPUT, POST_PREFIX

QUANTIZATION_OPS: tuple[str, ...] = (
    "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear", "QLinearConv",
    "QLinearMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat",
)
FP16_BLOCK_OPS: tuple[str, ...] = (*QUANTIZATION_OPS, "RoiAlign", "InstanceNormalization", "LayerNormalization",
                                   "GroupNormalization", "BatchNormalization")
"""Op types the fused model keeps in float32 under ``--fp16``."""


def to_float16(model: onnx.ModelProto, feeds: Sequence[gt.Feeds]) -> tuple[onnx.ModelProto, str]:
    """The float16 version of a fused model and a note: nodes per precision and, on ``feeds``, the
    largest difference and the argmax agreement of ``masks`` against the float32 model."""
    converted, report = gt.convert_float16(model, FP16_BLOCK_OPS, keep_float32_from=[FUSED_ROIS_INPUT],
                                           block_prefixes=[POST_PREFIX])
    note = (f"float16: {report.float16_nodes} nodes in float16, {report.float32_nodes} kept float32, "
            f"{report.casts} casts; inputs and outputs float32")
    outputs = [o.name for o in model.graph.output]
    if FUSED_MASKS_OUTPUT in outputs and feeds:
        ref = gt.run_feeds(gt.create_session(model), feeds)
        got = gt.run_feeds(gt.create_session(converted), feeds)
        i = outputs.index(FUSED_MASKS_OUTPUT)
        pairs = [(a[i], b[i]) for a, b in zip(ref, got) if a[i].shape == b[i].shape]  # an instance count may differ
        diff = max((float(np.abs(a - b).max(initial=0.0)) for a, b in pairs), default=0.0)
        agree = sum(int((a.argmax(1) == b.argmax(1)).sum()) for a, b in pairs)
        pixels = sum(a.argmax(1).size for a, _ in pairs)
        if pixels:
            note += f"; on the check inputs max abs {diff:.3g}, argmax agreement {100 * agree / pixels:.3f}%"
        else:
            note += "; no masks to compare on the check inputs (no instances found)"
        if len(pairs) < len(ref):
            note += f" ({len(ref) - len(pairs)} of {len(ref)} inputs with another number of instances)"
    return converted, note
