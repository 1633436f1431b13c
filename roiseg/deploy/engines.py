"""Where a fused model runs besides onnxruntime on CPU: OpenVINO, and TensorRT (through onnxruntime).

* **OpenVINO** (optional dependency group ``openvino``): :func:`engine_session` compiles the model
  on CPU with ``INFERENCE_PRECISION_HINT=f32``. Without it OpenVINO computes in bf16 on CPUs that
  have bf16 (AMX, AVX512_BF16), which moved probabilities by up to 0.38.
* **TensorRT**: its ONNX parser takes no integer-quantized ops (an int8 detector made with
  onnxruntime's dynamic quantization has ``ConvInteger`` / ``DynamicQuantizeLinear``), and
  ``RoiAlign`` becomes the ``ROIAlign_TRT`` plugin (TensorRT >= 8.6, the plugin library loaded).
  :func:`tensorrt_notes` says so at fuse time. The ROI count is dynamic, so onnxruntime's TensorRT
  provider gets optimisation profiles (:func:`trt_profiles`: 1 / 8 / 64 ROIs by default).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import onnx

import graph_tools as gt
from roiseg.conventions import DEFAULT_IMAGE_INPUT, FUSED_ROIS_INPUT, RAW_IMAGE_INPUT
from roiseg.errors import InputError

ENGINES: tuple[str, ...] = ("onnxruntime", "openvino")
OPENVINO_PRECISION: str = "f32"
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` for parity (its CPU default may be bf16)."""
TENSORRT_UNSUPPORTED_OPS: frozenset[str] = frozenset({
    "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "QLinearAdd",
    "QLinearMul", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "Unique", "StringNormalizer", "TfIdfVectorizer", "MaxRoiPool", "Multinomial",
})
"""Ops of the default domain TensorRT's ONNX parser (onnx-tensorrt) does not take."""
TENSORRT_PLUGIN_OPS: dict[str, str] = {"RoiAlign": "ROIAlign_TRT"}
"""Ops TensorRT runs as a plugin (op type -> plugin name)."""
TRT_ROIS: tuple[int, int, int] = (1, 8, 64)
"""ROI counts of TensorRT's optimisation profile: min, opt, max."""
TRT_IMAGE_SIDES: tuple[int, int] = (32, 4096)
"""Smallest and largest image side of the profile of a raw-image model (opt: the detector's size)."""


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


def check_trt_rois(rois: Sequence[int]) -> tuple[int, int, int]:
    """``(min, opt, max)`` ROI counts; InputError unless ``1 <= min <= opt <= max``."""
    values = tuple(int(v) for v in rois)
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise InputError(f"TensorRT ROI profile must be three counts min <= opt <= max with min >= 1, got {list(rois)}")
    return values  # type: ignore[return-value]


def trt_profiles(input_hw: tuple[int, int], image_input: str = "tensor",
                 rois: Sequence[int] = TRT_ROIS, has_rois: bool = True) -> dict[str, str]:
    """onnxruntime TensorRT provider options ``trt_profile_{min,opt,max}_shapes`` for a fused model
    (``has_rois`` False: an instance model, the image input only)."""
    lo, opt, hi = check_trt_rois(rois)
    h, w = input_hw
    if image_input == "raw":
        small, big = TRT_IMAGE_SIDES
        images = [f"{RAW_IMAGE_INPUT}:{small}x{small}x3", f"{RAW_IMAGE_INPUT}:{h}x{w}x3", f"{RAW_IMAGE_INPUT}:{big}x{big}x3"]
    else:
        images = [f"{DEFAULT_IMAGE_INPUT}:1x3x{h}x{w}"] * 3
    return {f"trt_profile_{kind}_shapes": f"{img},{FUSED_ROIS_INPUT}:{n}x4" if has_rois else img
            for kind, img, n in zip(("min", "opt", "max"), images, (lo, opt, hi))}


def engine_session(engine: str, model: onnx.ModelProto, arena: bool = True) -> Any:
    """A session with ``run(output_names, feeds)`` on ``engine`` (``onnxruntime`` CPU, ``openvino`` CPU f32).

    ``arena=False``: onnxruntime frees a run's buffers after it (parity checks bound their peak so)."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "openvino":
        return gt.create_openvino_session(model, "CPU", OPENVINO_PRECISION)
    return gt.create_session(model, arena=arena)
