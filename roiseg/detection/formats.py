"""A detector's detection output: which format it is in (from shape and metadata), how it is read
(:class:`DetectionSpec`), what the post-processing keeps (:class:`InstanceParams`) and its result
(:class:`Instances`). Torch-free: a fused instance model is run without torch.

The formats are the rows of :data:`roiseg.detection.layouts.LAYOUTS`:

* ``ultralytics`` [1, 4 + nc, A] (YOLOv8/v9/v11 exports): boxes cx, cy, w, h in input pixels, then
  the class scores after the sigmoid. ``A`` = the cells of strides 8, 16 and 32.
* ``yolox`` [1, A, 5 + nc]: box, objectness, class scores; a detection's class score is
  objectness x class score. YOLOX's own ONNX export (``decode_in_inference`` off, as in
  ``../shared/extractors/yolox_nano.onnx``) gives *raw grid* boxes: ``cx = (x + grid_x) * stride``,
  ``w = exp(w) * stride`` over strides 8, 16, 32 (cells row by row, stride by stride); objectness and
  class scores are already sigmoided (YOLOX's head applies the sigmoid in eval mode). With
  ``decode_in_inference`` the boxes are decoded (cx, cy, w, h in input pixels): there is an ``Exp``
  upstream of the output then, which is how :func:`detection_spec` tells the two apart.
* ``yolov5`` [1, 3 A, 5 + nc] (YOLOv5 and YOLOv7 exports, three anchor boxes per cell): boxes decoded
  in the graph (cx, cy, w, h in input pixels), objectness and class scores after the sigmoid; read like
  decoded ``yolox`` (score = objectness x class score).
* ``nms`` [K, 7] (or [1, K, 7]): rows already suppressed, ``batchno, classid, score, x1, y1, x2, y2``
  in input pixels.
* ``end2end`` [1, K, 6]: Ultralytics' end-to-end output (YOLOv10, YOLO26, ``export(nms=True)``), the
  ``K`` (300 by default) best detections, ``x1, y1, x2, y2, score, classid`` in input pixels, with no
  threshold applied (low-score rows fill it up).

The Python reference of the post-processing is :mod:`roiseg.detection.reference`, the same as an
ONNX graph :mod:`roiseg.detection.graph`.
"""

from __future__ import annotations

import ast
import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

import graph_tools as gt
from roiseg.conventions import (
    DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_INSTANCES, DEFAULT_PERSON_CLASSES, DEFAULT_SCORE_THRESHOLD, DETECTION_STRIDES,
)
from roiseg.detection.layouts import DETECTION_FORMATS, LAYOUTS, Layout
from roiseg.errors import InputError, graph_errors

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class DetectionSpec:
    """Where a detector's detections are and how to read them."""

    tensor: str
    format: str
    input_hw: tuple[int, int]
    num_classes: int
    """Class count (``0`` for the row formats, whose class ids are not bounded by the shape)."""
    decoded: bool = True
    """``yolox``: boxes already in pixels (``False``: raw grid outputs, decoded with the strides)."""
    activated: bool = True
    """Scores are already probabilities (``False``: logits, a sigmoid is applied)."""
    strides: tuple[int, ...] = DETECTION_STRIDES

    def anchors(self) -> int:
        return anchor_count(self.input_hw, self.strides)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "DetectionSpec":
        d = json.loads(text)
        return cls(**{**d, "input_hw": tuple(d["input_hw"]), "strides": tuple(d["strides"])})


@dataclass(frozen=True)
class InstanceParams:
    """What the post-processing keeps."""

    person_classes: tuple[int, ...] = DEFAULT_PERSON_CLASSES
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    """Detections with a score ``>`` this are kept."""
    iou_threshold: float = DEFAULT_IOU_THRESHOLD
    """A detection overlapping a better one of its class with IoU ``>`` this is suppressed."""
    max_instances: int = DEFAULT_MAX_INSTANCES

    def check(self, spec: DetectionSpec) -> None:
        """InputError for values the post-processing cannot honour on ``spec``'s detections."""
        classes = self.person_classes
        if not classes or len(set(classes)) != len(classes) or min(classes) < 0:
            raise InputError(f"person classes must be distinct class ids >= 0, got {list(classes)}")
        if spec.num_classes and max(classes) >= spec.num_classes:
            raise InputError(f"person class {max(classes)} is out of range: the detector has {spec.num_classes} classes")
        if not 0.0 <= self.score_threshold < 1.0:
            raise InputError(f"score threshold must be in [0, 1), got {self.score_threshold}")
        if not 0.0 <= self.iou_threshold <= 1.0:
            raise InputError(f"IoU threshold must be in [0, 1], got {self.iou_threshold}")
        if self.max_instances < 1:
            raise InputError(f"max instances must be >= 1, got {self.max_instances}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class Instances:
    """Kept detections, best first: ``boxes`` [K, 4] normalised x1y1x2y2, ``scores`` [K], ``classes`` [K] int64."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def anchor_count(input_hw: tuple[int, int], strides: Sequence[int] = DETECTION_STRIDES) -> int:
    """Cells over all strides (``ceil(H / s) * ceil(W / s)`` each)."""
    h, w = input_hw
    return sum(-(-h // s) * -(-w // s) for s in strides)


def ultralytics_classes(props: dict[str, str]) -> int | None:
    """Class count from Ultralytics' ``names`` metadata (a Python dict literal), ``None`` when absent."""
    try:
        names = ast.literal_eval(props["names"])
    except (KeyError, ValueError, SyntaxError):
        return None
    return len(names) if isinstance(names, (dict, list)) else None


def guess_format(shape: Sequence, anchors: int, props: dict[str, str]) -> str | None:
    """The format a detection tensor of ``shape`` is in, from shape and metadata (the first layout of
    :data:`LAYOUTS` that fits); ``None`` when it fits none. Dynamic rows mean a row format; an
    Ultralytics export says its class count in its ``names`` metadata."""
    shape = list(shape)
    if not shape or not isinstance(shape[-1], int):
        return None
    if len(shape) == 2 or (len(shape) == 3 and not isinstance(shape[1], int)):
        return next((name for name, at in LAYOUTS.items() if at.fits_rows(shape)), None)
    if len(shape) != 3 or shape[0] not in (1, "?") or not all(isinstance(d, int) for d in shape[1:]):
        return None
    nc = ultralytics_classes(props)
    if nc is not None and shape[1] == LAYOUTS["ultralytics"].first_class + nc and props.get("task", "detect") == "detect":
        return "ultralytics"
    for name, at in LAYOUTS.items():
        if at.fits_grid(shape, anchors) if not at.rows else (at.fits_rows(shape) and shape[1] != anchors):
            return name
    return None


def detection_candidates(model: onnx.ModelProto, anchors: int) -> list[str]:
    """Graph outputs whose shape fits a detection format."""
    props = gt.read_props(model)
    return [o.name for o in model.graph.output if guess_format(gt.dims(o), anchors, props) is not None]


def _image_hw(model: onnx.ModelProto) -> tuple[int, int]:
    inputs = gt.graph_inputs(model)
    shape = gt.dims(inputs[0]) if len(inputs) == 1 else []
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]):
        raise InputError("the detector needs one image input [1, 3, H, W] with a static H and W, got "
                         + ", ".join(f"{vi.name} {gt.dims(vi)}" for vi in inputs))
    return int(shape[2]), int(shape[3])


def _shape_of(model: onnx.ModelProto, tensor: str) -> list:
    for out in model.graph.output:
        if out.name == tensor and gt.dims(out):
            return gt.dims(out)
    with graph_errors():
        gt.require_tensor(model, tensor)
        shape = gt.tensor_shapes(model).get(tensor)
    if not shape:
        raise InputError(f"the shape of detection tensor {tensor!r} is unknown; it cannot be read")
    return list(shape)


def classes_of(at: Layout, shape: list, anchors: int, decoded: bool, tensor: str) -> int:
    """The class count of ``shape`` in the format ``at`` (0 for a row format); InputError when it does not fit."""
    if at.rows:
        if not at.fits_rows(shape):
            raise InputError(f"{tensor!r} {shape} is not in the {at.name} format: expected {at.shape}")
        return 0
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        raise InputError(f"{tensor!r} {shape} is not a [1, *, *] detection tensor with static sizes")
    row_axis, col_axis = at.grid_axes()
    # an anchor-based export has a fixed row count, and raw grid outputs are decoded cell by cell
    rows_fixed = at.anchors_per_cell > 1 or not decoded
    if shape[col_axis] <= at.first_class or (rows_fixed and shape[row_axis] != at.grid_rows(anchors)):
        rows = f" with {at.grid_rows(anchors)} rows (strides 8, 16, 32 on the input size)" if rows_fixed else ""
        raise InputError(f"{tensor!r} {shape} is not in the {at.name} format {at.shape}{rows}")
    classes, detections = shape[col_axis] - at.first_class, shape[row_axis]
    if detections <= shape[col_axis]:  # every grid detector gives more detections than values per detection
        others = ", ".join(n for n in DETECTION_FORMATS if n != at.name)
        raise InputError(f"{tensor!r} {shape} read in the {at.name} format {at.shape} would hold {detections} detections "
                         f"of {classes} classes: not that format (its axes are the other way round?); "
                         f"give the right one (--det-format {others})")
    return classes


def detection_spec(model: onnx.ModelProto, tensor: str | None = None, det_format: str | None = None,
                   decoded: bool | None = None, activated: bool = True) -> DetectionSpec:
    """How to read ``model``'s detections: ``tensor`` (default: the one output that fits a format),
    ``det_format`` (default: from its shape and the model's metadata), ``decoded`` (``yolox``; default:
    an ``Exp`` upstream of the tensor). InputError when they cannot be read."""
    if det_format is not None and det_format not in DETECTION_FORMATS:
        raise InputError(f"unknown detection format {det_format!r}; expected one of {', '.join(DETECTION_FORMATS)}")
    input_hw = _image_hw(model)
    anchors = anchor_count(input_hw)
    if tensor is None:
        found = detection_candidates(model, anchors)
        if len(found) != 1:
            outputs = ", ".join(f"{o.name} {gt.dims(o)}" for o in model.graph.output)
            raise InputError(f"{'no' if not found else 'more than one'} output looks like detections ({outputs}); "
                             "name the detection tensor (--detections)")
        tensor = found[0]
    shape = _shape_of(model, tensor)
    fmt = det_format or guess_format(shape, anchors, gt.read_props(model))
    if fmt is None:
        raise InputError(f"cannot tell the format of {tensor!r} {shape} from its shape; "
                         f"give it (--det-format {'|'.join(DETECTION_FORMATS)})")
    if decoded is None:
        decoded = not LAYOUTS[fmt].raw_grid or exp_upstream(model, tensor)
    elif not decoded and not LAYOUTS[fmt].raw_grid:
        raw = ", ".join(name for name, at in LAYOUTS.items() if at.raw_grid)
        raise InputError(f"only the {raw} format has raw grid boxes to decode; {fmt} boxes are decoded")
    classes = classes_of(LAYOUTS[fmt], shape, anchors, decoded, tensor)
    return DetectionSpec(tensor, fmt, input_hw, classes, decoded=decoded, activated=activated)


def exp_upstream(model: onnx.ModelProto, tensor: str) -> bool:
    """Whether an ``Exp`` node computes part of ``tensor`` (YOLOX decodes w, h with ``exp``)."""
    upstream = gt.upstream_tensors(model, tensor)
    return any(n.op_type == "Exp" and any(o in upstream for o in n.output) for n in model.graph.node)


def grid_and_strides(input_hw: tuple[int, int], strides: Sequence[int] = DETECTION_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """[A, 2] cell x, y and [A, 1] stride of every anchor: stride by stride, cells row by row."""
    grids, steps = [], []
    for s in strides:
        h, w = -(-input_hw[0] // s), -(-input_hw[1] // s)
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], 1))
        steps.append(np.full((h * w, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(steps).astype(np.float32)
