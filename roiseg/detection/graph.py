"""The detection post-processing as an ONNX graph: detection tensor -> ``boxes``, ``scores``, ``classes``.

It computes what :func:`roiseg.detection.reference.reference_instances` computes, with standard ops
only (opset >= 16): ``Squeeze``/``Transpose``/``Slice``/``Gather`` pick boxes and person scores,
``Exp``/``Mul``/``Add`` decode YOLOX grid outputs, ``ArgMax``/``GatherElements`` take the best
person class per detection, ``NonMaxSuppression`` suppresses per class (each detection is offered in
its best class only; the others get score -1, below any threshold), ``TopK`` keeps the
``max_instances`` best (``k = min(K, cap)``, so K = 0 gives empty outputs), ``Div``/``Clip`` normalise.
The row formats (``nms``, ``end2end``) filter with ``NonZero`` and only sort and cap.

Outputs: ``boxes`` float32 [K, 4] normalised x1y1x2y2 in [0, 1] (pixels of the original image when
the graph also takes the raw image), ``scores`` float32 [K] (decreasing),
``classes`` int64 [K] (the detector's class ids).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto

from graph_tools.build import GraphBuilder, value_info
from roiseg.conventions import (
    FUSED_BOXES_OUTPUT, FUSED_CLASSES_OUTPUT, FUSED_SCORES_OUTPUT, INSTANCE_AXIS, MIN_HEAD_OPSET, RAW_HEIGHT_AXIS,
    RAW_WIDTH_AXIS,
)
from roiseg.detection.formats import DetectionSpec, InstanceParams, grid_and_strides
from roiseg.detection.layouts import LAYOUTS
from roiseg.errors import InputError

NOT_OFFERED: float = -1.0
"""Score of a detection in a class that is not its best person class (never above a threshold >= 0)."""


def _slice(b: GraphBuilder, x: str, start: int, end: int) -> str:
    return b.op("Slice", [x, b.const([start], np.int64), b.const([end], np.int64), b.const([1], np.int64)])


def _rows(b: GraphBuilder, det: str, spec: DetectionSpec) -> str:
    """The detections as [A, columns] (one row per anchor or per suppressed detection)."""
    at = LAYOUTS[spec.format]
    if at.rows:
        return b.op("Reshape", [det, b.const([-1, at.columns], np.int64)])
    rows = b.op("Squeeze", [det, b.const([0], np.int64)])
    return b.op("Transpose", [rows], perm=[1, 0]) if at.transposed else rows


def _decoded_boxes(b: GraphBuilder, rows: str, spec: DetectionSpec) -> str:
    """[A, 4] pixel x1y1x2y2 from the cx, cy, w, h columns (grid-decoded for raw YOLOX outputs)."""
    xy, wh = _slice(b, rows, 0, 2), _slice(b, rows, 2, 4)
    if not spec.decoded:
        grid, stride = grid_and_strides(spec.input_hw, spec.strides)
        xy = b.op("Mul", [b.op("Add", [xy, b.const(grid, hint="grid")]), b.const(stride, hint="stride")])
        wh = b.op("Mul", [b.op("Exp", [wh]), b.const(stride, hint="stride")])
    half = b.op("Mul", [wh, b.const(np.float32(0.5))])
    return b.op("Concat", [b.op("Sub", [xy, half]), b.op("Add", [xy, half])], axis=1)


def _person_scores(b: GraphBuilder, rows: str, spec: DetectionSpec, persons: Sequence[int]) -> str:
    """[A, P]: each person class's score (objectness x class score for YOLOX and YOLOv5)."""
    at = LAYOUTS[spec.format]
    scores = b.op("Gather", [rows, b.const([at.first_class + c for c in persons], np.int64)], axis=1)
    if not spec.activated:
        scores = b.op("Sigmoid", [scores])
    if at.objectness:
        obj = _slice(b, rows, 4, 5)
        scores = b.op("Mul", [obj if spec.activated else b.op("Sigmoid", [obj]), scores])
    return scores


def _best_k(b: GraphBuilder, scores: str, cap: int) -> tuple[str, str]:
    """``TopK`` of [K] ``scores`` with ``k = min(K, cap)``: values and their positions."""
    k = b.op("Min", [b.op("Shape", [scores]), b.const([cap], np.int64)])
    values, order = b.op("TopK", [scores, k], outputs=2, axis=0, largest=1, sorted=1)
    return values, order


def _outputs(b: GraphBuilder, boxes_px: str, picked: str, scores: str, classes: str, spec: DetectionSpec) -> str:
    """Name the scores and class id outputs; the picked boxes normalised and clipped (returned)."""
    h, w = spec.input_hw
    boxes = b.op("Div", [b.op("Gather", [boxes_px, picked], axis=0), b.const([w, h, w, h], np.float32)])
    b.op("Identity", [scores], outputs=[FUSED_SCORES_OUTPUT])
    b.op("Identity", [classes], outputs=[FUSED_CLASSES_OUTPUT])
    return b.op("Clip", [boxes, b.const(np.float32(0.0)), b.const(np.float32(1.0))])


def _box_outputs(b: GraphBuilder, normalised: str, roi_feed: str | None, image_input: str | None) -> None:
    """``boxes`` (normalised, or pixels of the ``image_input`` image [H0, W0, 3]) and the ``roi_feed`` copy."""
    if image_input is None:
        b.op("Identity", [normalised], outputs=[FUSED_BOXES_OUTPUT])
    else:
        size = b.op("Gather", [b.op("Shape", [image_input]), b.const([1, 0, 1, 0], np.int64)], axis=0)  # W0 H0 W0 H0
        b.op("Mul", [normalised, b.op("Cast", [size], to=TensorProto.FLOAT)], outputs=[FUSED_BOXES_OUTPUT])
    if roi_feed is not None:
        b.op("Identity", [normalised], outputs=[roi_feed])


def _grid_post(b: GraphBuilder, rows: str, spec: DetectionSpec, params: InstanceParams) -> str:
    boxes_px = _decoded_boxes(b, rows, spec)
    person = _person_scores(b, rows, spec, params.person_classes)
    slot = b.op("ArgMax", [person], axis=1, keepdims=1)  # [A, 1], first maximum on ties
    best = b.op("GatherElements", [person, slot], axis=1)  # [A, 1]
    offered = b.op("Equal", [slot, b.const([list(range(len(params.person_classes)))], np.int64)])  # [A, P]
    per_class = b.op("Where", [offered, best, b.const(np.float32(NOT_OFFERED))])
    nms_scores = b.op("Unsqueeze", [b.op("Transpose", [per_class], perm=[1, 0]), b.const([0], np.int64)])
    nms_boxes = b.op("Unsqueeze", [boxes_px, b.const([0], np.int64)])
    selected = b.op("NonMaxSuppression", [
        nms_boxes, nms_scores, b.const([params.max_instances], np.int64),
        b.const([params.iou_threshold], np.float32), b.const([params.score_threshold], np.float32),
    ], center_point_box=0)  # [K, 3]: batch, class slot, box index
    index = b.op("Gather", [selected, b.const(2, np.int64)], axis=1)
    slots = b.op("Gather", [selected, b.const(1, np.int64)], axis=1)
    kept = b.op("Gather", [b.op("Reshape", [best, b.const([-1], np.int64)]), index], axis=0)
    scores, order = _best_k(b, kept, params.max_instances)
    classes = b.op("Gather", [b.const(list(params.person_classes), np.int64), b.op("Gather", [slots, order], axis=0)],
                   axis=0)
    return _outputs(b, boxes_px, b.op("Gather", [index, order], axis=0), scores, classes, spec)


def _row_post(b: GraphBuilder, rows: str, spec: DetectionSpec, params: InstanceParams) -> str:
    at = LAYOUTS[spec.format]
    column = {name: b.op("Reshape", [_slice(b, rows, i, i + 1), b.const([-1], np.int64)])
              for name, i in (("classid", at.classid), ("score", at.score))}
    classes = b.op("Cast", [column["classid"]], to=TensorProto.INT64)
    score = column["score"]
    person = b.op("Equal", [b.op("Unsqueeze", [classes, b.const([1], np.int64)]),
                            b.const(list(params.person_classes), np.int64)])  # [M, P]
    hits = b.op("ReduceSum", [b.op("Cast", [person], to=TensorProto.FLOAT), b.const([1], np.int64)], keepdims=0)
    keep = b.op("And", [b.op("Greater", [score, b.const(np.float32(params.score_threshold))]),
                        b.op("Greater", [hits, b.const(np.float32(0.0))])])
    index = b.op("Reshape", [b.op("NonZero", [keep]), b.const([-1], np.int64)])
    scores, order = _best_k(b, b.op("Gather", [score, index], axis=0), params.max_instances)
    picked = b.op("Gather", [index, order], axis=0)
    boxes_px = _slice(b, rows, at.boxes, at.boxes + 4)
    return _outputs(b, boxes_px, picked, scores, b.op("Gather", [classes, picked], axis=0), spec)


def postprocess_model(spec: DetectionSpec, params: InstanceParams, opset: int, ir_version: int,
                      input_shape: Sequence[int | str] | None = None, prefix: str = "", roi_feed: str | None = None,
                      image_input: str | None = None) -> onnx.ModelProto:
    """A model from the detection tensor (input named ``spec.tensor``) to ``boxes``, ``scores``, ``classes``.

    ``input_shape`` defaults to the format's shape for ``spec``; ``prefix`` starts every inner name.
    ``roi_feed``: also output the normalised boxes under this name (to feed a ROI model's ``rois``).
    ``image_input``: a second input of that name, the original uint8 image [H0, W0, 3]; ``boxes`` are
    then pixels of it (the normalised boxes times W0, H0).
    """
    params.check(spec)
    if opset < MIN_HEAD_OPSET:
        raise InputError(f"the post-processing graph needs opset >= {MIN_HEAD_OPSET}, got {opset}")
    at = LAYOUTS[spec.format]
    if input_shape is None:
        input_shape = at.input_shape(spec.anchors(), spec.num_classes)
    b = GraphBuilder(prefix)
    rows = _rows(b, spec.tensor, spec)
    normalised = (_row_post if at.rows else _grid_post)(b, rows, spec, params)
    _box_outputs(b, normalised, roi_feed, image_input)
    outputs = [
        value_info(FUSED_BOXES_OUTPUT, TensorProto.FLOAT, [INSTANCE_AXIS, 4]),
        value_info(FUSED_SCORES_OUTPUT, TensorProto.FLOAT, [INSTANCE_AXIS]),
        value_info(FUSED_CLASSES_OUTPUT, TensorProto.INT64, [INSTANCE_AXIS]),
        *([value_info(roi_feed, TensorProto.FLOAT, [INSTANCE_AXIS, 4])] if roi_feed else []),
    ]
    inputs = [value_info(spec.tensor, TensorProto.FLOAT, list(input_shape))]
    if image_input is not None:
        inputs.append(value_info(image_input, TensorProto.UINT8, [RAW_HEIGHT_AXIS, RAW_WIDTH_AXIS, 3]))
    return b.model(inputs, outputs, opset, ir_version, name="roiseg_detection_postprocessing")
