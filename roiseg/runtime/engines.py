"""Where a fused model runs besides onnxruntime on CPU: OpenVINO, and TensorRT (through onnxruntime).

* **OpenVINO** (optional dependency group ``openvino``): :func:`engine_session` compiles the model
  on CPU with ``INFERENCE_PRECISION_HINT=f32``. Without it OpenVINO computes in bf16 on CPUs that
  have bf16 (AMX, AVX512_BF16), which moved probabilities by up to 0.38.
* **TensorRT** (onnxruntime's provider): the ROI count and a raw image's size are dynamic, so the
  provider gets optimisation profiles (:func:`trt_profiles`: 1 / 8 / 64 ROIs by default). What
  TensorRT's parser cannot take is said at fuse time (:mod:`roiseg.export.tensorrt`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import graph_tools as gt
from roiseg.conventions import FUSED_ROIS_INPUT, ImageInput
from roiseg.errors import InputError

if TYPE_CHECKING:
    import onnx

ENGINES: tuple[str, ...] = ("onnxruntime", "openvino")
OPENVINO_PRECISION: str = "f32"
"""OpenVINO's ``INFERENCE_PRECISION_HINT`` for parity (its CPU default may be bf16)."""
TRT_ROIS: tuple[int, int, int] = (1, 8, 64)
"""ROI counts of TensorRT's optimisation profile: min, opt, max."""
TRT_IMAGE_SIDES: tuple[int, int] = (32, 4096)
"""Smallest and largest image side of the profile of a raw-image model (opt: the detector's size)."""


def check_trt_rois(rois: Sequence[int]) -> tuple[int, int, int]:
    """``(min, opt, max)`` ROI counts; InputError unless ``1 <= min <= opt <= max``."""
    values = tuple(int(v) for v in rois)
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise InputError(f"TensorRT ROI profile must be three counts min <= opt <= max with min >= 1, got {list(rois)}")
    return values  # type: ignore[return-value]


def trt_profiles(input_hw: tuple[int, int], image_input: str | ImageInput = ImageInput.TENSOR,
                 rois: Sequence[int] = TRT_ROIS, has_rois: bool = True) -> dict[str, str]:
    """onnxruntime TensorRT provider options ``trt_profile_{min,opt,max}_shapes`` for a fused model of
    input size ``input_hw`` (pixels); ``rois``: min/opt/max ROI counts; ``has_rois`` False: an instance
    model, the image input only."""
    lo, opt, hi = check_trt_rois(rois)
    h, w = input_hw
    name = ImageInput.parse(image_input).input_name
    if ImageInput.parse(image_input) is ImageInput.RAW:
        small, big = TRT_IMAGE_SIDES
        images = [f"{name}:{small}x{small}x3", f"{name}:{h}x{w}x3", f"{name}:{big}x{big}x3"]
    else:
        images = [f"{name}:1x3x{h}x{w}"] * 3
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
