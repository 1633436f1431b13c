"""``roiseg fuse --image-input raw``: the original image in, masks at its size out.

The fused model takes ``image`` uint8 [H0, W0, 3] BGR of any size (as ``cv2.imread`` gives it) and
does :func:`roiseg.conventions.preprocess` in the graph: BGR -> RGB (``Gather``), HWC -> NCHW,
bilinear resize to the detector's ``H x W`` (``Resize`` linear, ``half_pixel``: OpenCV's
``INTER_LINEAR`` geometry), rounding to whole grey levels (OpenCV resizes uint8 images), times the
scale. OpenCV computes the resize in fixed point, so a value may differ by one grey level
(``roiseg.verify.tolerances.RAW_PREPROCESS_ATOL``); elsewhere the two agree exactly. The masks are pasted at ``H0 x W0``.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from roiseg.conventions import (
    DEFAULT_IMAGE_INPUT, PREPROCESSED_TENSOR, RAW_HEIGHT_AXIS, RAW_IMAGE_INPUT, RAW_WIDTH_AXIS, Preprocessing,
)
from roiseg.errors import InputError

PRE_PREFIX: str = PREPROCESSED_TENSOR[: -len(DEFAULT_IMAGE_INPUT)]
"""Prefix of the preprocessing nodes in the fused model (``roiseg_pre/``)."""


def check_raw_preprocessing(pre: Preprocessing) -> None:
    """InputError unless the graph can do ``pre`` (direct bilinear resize to NCHW float32)."""
    if (pre.resize, pre.interpolation, pre.layout, pre.dtype) != ("direct", "linear", "nchw", "float32"):
        raise InputError(f"the raw image input does direct bilinear resizing to NCHW float32 only; the head was "
                         f"trained with preprocessing {pre.to_json()}")


def preprocessing_model(input_hw: tuple[int, int], pre: Preprocessing, opset: int, ir_version: int) -> onnx.ModelProto:
    """``image`` uint8 [height, width, 3] BGR -> ``images`` float32 [1, 3, H, W] as ``preprocess`` makes it."""
    check_raw_preprocessing(pre)
    h, w = input_hw
    consts = [
        numpy_helper.from_array(np.array([2, 1, 0] if pre.color == "rgb" else [0, 1, 2], np.int64), "channel_order"),
        numpy_helper.from_array(np.array([0], np.int64), "batch_axis"),
        numpy_helper.from_array(np.array([1, 3, h, w], np.int64), "sizes"),
        numpy_helper.from_array(np.float32(0.0), "lowest"), numpy_helper.from_array(np.float32(255.0), "highest"),
        numpy_helper.from_array(np.float32(pre.scale), "scale"),
    ]
    nodes = [
        helper.make_node("Gather", [RAW_IMAGE_INPUT, "channel_order"], ["ordered"], name="channel_order", axis=2),
        helper.make_node("Transpose", ["ordered"], ["chw"], name="to_chw", perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["chw", "batch_axis"], ["nchw"], name="add_batch"),
        helper.make_node("Cast", ["nchw"], ["float"], name="to_float", to=TensorProto.FLOAT),
        helper.make_node("Resize", ["float", "", "", "sizes"], ["resized"], name="resize", mode="linear",
                         coordinate_transformation_mode="half_pixel"),
        helper.make_node("Round", ["resized"], ["levels"], name="whole_levels"),
        helper.make_node("Clip", ["levels", "lowest", "highest"], ["clipped"], name="uint8_range"),
        helper.make_node("Mul", ["clipped", "scale"], [DEFAULT_IMAGE_INPUT], name="scale"),
    ]
    graph = helper.make_graph(
        nodes, "roiseg_preprocessing",
        [helper.make_tensor_value_info(RAW_IMAGE_INPUT, TensorProto.UINT8, [RAW_HEIGHT_AXIS, RAW_WIDTH_AXIS, 3])],
        [helper.make_tensor_value_info(DEFAULT_IMAGE_INPUT, TensorProto.FLOAT, [1, 3, h, w])], consts,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def raw_from_tensor(images: np.ndarray, pre: Preprocessing) -> np.ndarray:
    """[1, 3, H, W] preprocessed float32 -> [H, W, 3] uint8 BGR that preprocesses back to (nearly) it."""
    hwc = np.clip(np.rint(images[0].transpose(1, 2, 0) / pre.scale), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(hwc[:, :, ::-1] if pre.color == "rgb" else hwc)


DETECTOR_IMAGES: str = "detector_images"
"""Output of :func:`conversion_model`: the image as the detector wants it."""


def conversion_model(input_hw: tuple[int, int], head_pre: Preprocessing, det_pre: Preprocessing, opset: int,
                     ir_version: int) -> onnx.ModelProto:
    """``images`` [1, 3, H, W] preprocessed for the head -> :data:`DETECTOR_IMAGES` preprocessed for a
    detector that wants ``det_pre`` (channels reversed when the colour orders differ, times the ratio of
    the scales): the instance model's detection path when the head was trained on other preprocessing."""
    for pre in (head_pre, det_pre):
        check_raw_preprocessing(pre)
    h, w = input_hw
    consts = [numpy_helper.from_array(np.float32(det_pre.scale / head_pre.scale), "scale_ratio"),
              numpy_helper.from_array(np.array([2, 1, 0], np.int64), "reverse")]
    flip = head_pre.color != det_pre.color
    nodes = [helper.make_node("Gather", [DEFAULT_IMAGE_INPUT, "reverse"], ["reordered"], name="channel_order", axis=1)]
    nodes = nodes if flip else []
    nodes.append(helper.make_node("Mul", ["reordered" if flip else DEFAULT_IMAGE_INPUT, "scale_ratio"], [DETECTOR_IMAGES],
                                  name="rescale"))
    graph = helper.make_graph(
        nodes, "roiseg_detector_preprocessing",
        [helper.make_tensor_value_info(DEFAULT_IMAGE_INPUT, TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info(DETECTOR_IMAGES, TensorProto.FLOAT, [1, 3, h, w])], consts,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def convert_preprocessed(images: np.ndarray, head_pre: Preprocessing, det_pre: Preprocessing) -> np.ndarray:
    """What :func:`conversion_model` computes, in numpy."""
    out = images[:, ::-1] if head_pre.color != det_pre.color else images
    return np.ascontiguousarray(out * np.float32(det_pre.scale / head_pre.scale), dtype=np.float32)

