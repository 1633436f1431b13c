"""What stands between a fused model and a TensorRT engine, said at fuse time.

TensorRT's ONNX parser takes no integer-quantized ops (an int8 detector made with onnxruntime's
dynamic quantization has ``ConvInteger`` / ``DynamicQuantizeLinear``), and ``RoiAlign`` becomes the
``ROIAlign_TRT`` plugin (TensorRT >= 8.6, the plugin library loaded).
"""

from __future__ import annotations

from collections import Counter

import onnx

TENSORRT_UNSUPPORTED_OPS: frozenset[str] = frozenset({
    "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
    "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "Unique", "StringNormalizer", "TfIdfVectorizer", "MaxRoiPool", "Multinomial",
})
"""Ops of the default domain TensorRT's ONNX parser (onnx-tensorrt) does not take."""
TENSORRT_PLUGIN_OPS: dict[str, str] = {"RoiAlign": "ROIAlign_TRT"}
"""Ops TensorRT runs as a plugin (op type -> plugin name)."""


def tensorrt_notes(model: onnx.ModelProto) -> list[str]:
    """What stands between ``model`` and a TensorRT engine: unsupported ops (and other domains), plugins."""
    counts = Counter((n.domain or "", n.op_type) for n in model.graph.node)
    bad = sorted(f"{op} ({k})" for (dom, op), k in counts.items() if dom in ("", "ai.onnx") and op in TENSORRT_UNSUPPORTED_OPS)
    other = sorted(f"{dom}.{op} ({k})" for (dom, op), k in counts.items() if dom not in ("", "ai.onnx"))
    notes = []
    if bad or other:
        notes.append(f"TensorRT's ONNX parser does not take {', '.join(bad + other)}: this model cannot be built "
                     "into a TensorRT engine (onnxruntime's TensorRT provider runs those nodes on CUDA/CPU instead; "
                     "for TensorRT use a float or Q/DQ-quantized detector)")
    for op, plugin in TENSORRT_PLUGIN_OPS.items():
        if counts.get(("", op)) or counts.get(("ai.onnx", op)):
            notes.append(f"TensorRT runs {op} as the {plugin} plugin (TensorRT >= 8.6 with its plugin library loaded)")
    return notes
