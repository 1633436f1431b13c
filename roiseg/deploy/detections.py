"""A detector's detection output: which format it is in, and the person instances it holds (reference).

Formats (``conventions.DETECTION_FORMATS``):

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

:func:`reference_instances` is the Python reference of the in-graph post-processing
(:mod:`roiseg.deploy.detections_onnx`): decode to pixel x1, y1, x2, y2; per detection the best of
the person classes (first on ties); keep scores ``> score_threshold``; ``torchvision.ops.batched_nms``
(IoU threshold, per class); the ``max_instances`` best; normalise by the input size and clip to
[0, 1]. The row formats (``nms``, ``end2end``: :data:`ROW_LAYOUTS`) skip the suppression (done by the
detector, or not needed by its one-to-one head).
"""

from __future__ import annotations

import ast
import json
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import onnx
import torch
import torchvision

import graph_tools as gt
from roiseg.conventions import (
    DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_INSTANCES, DEFAULT_PERSON_CLASSES, DEFAULT_SCORE_THRESHOLD, DETECTION_FORMATS,
    DETECTION_STRIDES,
)
from roiseg.errors import InputError, graph_errors

NMS_COLUMNS: int = 7
"""``batchno, classid, score, x1, y1, x2, y2``."""
OBJECTNESS_FORMATS: tuple[str, ...] = ("yolox", "yolov5")
"""Formats with an objectness column: box (4), objectness, class scores; a class's score is objectness x class score."""
ANCHORS_PER_CELL: dict[str, int] = {"yolov5": 3}
"""Boxes per grid cell of the anchor-based formats (:func:`grid_rows`; the others have one)."""
END2END_COLUMNS: int = 6
"""``x1, y1, x2, y2, score, classid``."""


@dataclass(frozen=True)
class RowLayout:
    """Where a row format keeps its columns: ``columns`` per row, the four pixel x1y1x2y2 from ``boxes``."""

    columns: int
    boxes: int
    score: int
    classid: int


ROW_LAYOUTS: dict[str, RowLayout] = {
    "nms": RowLayout(NMS_COLUMNS, boxes=3, score=2, classid=1),
    "end2end": RowLayout(END2END_COLUMNS, boxes=0, score=4, classid=5),
}
"""The formats whose detections are already final rows (no decoding, no suppression)."""


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


def grid_rows(fmt: str, cells: int) -> int:
    """Detections a grid format gives for ``cells`` grid cells (:func:`anchor_count`): one per cell, or
    :data:`ANCHORS_PER_CELL` for the anchor-based formats."""
    return ANCHORS_PER_CELL.get(fmt, 1) * cells


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
    """The format a detection tensor of ``shape`` is in, from shape and metadata; ``None`` when it fits none."""
    if any(not isinstance(d, int) for d in shape[-1:]):
        return None
    dynamic_rows = len(shape) == 3 and not isinstance(shape[1], int)
    if shape[-1] == NMS_COLUMNS and (len(shape) == 2 or dynamic_rows):
        return "nms"
    if shape[-1] == END2END_COLUMNS and dynamic_rows:
        return "end2end"
    if len(shape) != 3 or shape[0] not in (1, "?") or not all(isinstance(d, int) for d in shape[1:]):
        return None
    a, b = shape[1], shape[2]
    nc = ultralytics_classes(props)
    if nc is not None and a == 4 + nc and props.get("task", "detect") == "detect":
        return "ultralytics"
    if b == anchors and a > 4:
        return "ultralytics"
    if a == anchors and b > 5:
        return "yolox"
    if a == grid_rows("yolov5", anchors) and b > 5:
        return "yolov5"
    if b == NMS_COLUMNS and a != anchors:
        return "nms"
    if b == END2END_COLUMNS and a != anchors:
        return "end2end"
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


def _check_shape(fmt: str, shape: list, anchors: int, decoded: bool, tensor: str) -> int:
    """The class count of ``shape`` in ``fmt``; InputError when it does not fit."""
    last = shape[-1] if shape and isinstance(shape[-1], int) else None
    if fmt == "nms":
        if len(shape) not in (2, 3) or last != NMS_COLUMNS:
            raise InputError(f"{tensor!r} {shape} is not in the nms format: expected [K, 7] rows "
                             "batchno, classid, score, x1, y1, x2, y2")
        return 0
    if fmt == "end2end":
        if len(shape) != 3 or last != END2END_COLUMNS:
            raise InputError(f"{tensor!r} {shape} is not in the end2end format: expected [1, K, 6] rows "
                             "x1, y1, x2, y2, score, classid")
        return 0
    if len(shape) != 3 or not all(isinstance(d, int) for d in shape[1:]):
        raise InputError(f"{tensor!r} {shape} is not a [1, *, *] detection tensor with static sizes")
    if fmt == "ultralytics":
        if shape[1] <= 4:
            raise InputError(f"{tensor!r} {shape} is not in the ultralytics format [1, 4 + classes, anchors]")
        return shape[1] - 4
    if fmt == "yolov5":
        if shape[2] <= 5 or shape[1] != grid_rows(fmt, anchors):
            raise InputError(f"{tensor!r} {shape} is not in the yolov5 format [1, {grid_rows(fmt, anchors)}, "
                             f"5 + classes] ({ANCHORS_PER_CELL[fmt]} boxes per cell of strides 8, 16, 32 on the "
                             "input size)")
        return shape[2] - 5
    if shape[2] <= 5 or (not decoded and shape[1] != anchors):
        raise InputError(f"{tensor!r} {shape} is not in the yolox format [1, anchors, 5 + classes]"
                         + ("" if decoded else f" with {anchors} anchors (strides 8, 16, 32 on the input size)"))
    return shape[2] - 5


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
        decoded = fmt != "yolox" or exp_upstream(model, tensor)
    elif not decoded and fmt != "yolox":
        raise InputError(f"only the yolox format has raw grid boxes to decode; {fmt} boxes are decoded")
    classes = _check_shape(fmt, shape, anchors, decoded, tensor)
    return DetectionSpec(tensor, fmt, input_hw, classes, decoded=decoded, activated=activated)


def exp_upstream(model: onnx.ModelProto, tensor: str) -> bool:
    """Whether an ``Exp`` node computes part of ``tensor`` (YOLOX decodes w, h with ``exp``)."""
    upstream = gt.upstream_tensors(model, tensor)
    return any(n.op_type == "Exp" and any(o in upstream for o in n.output) for n in model.graph.node)


# --------------------------------------------------------------------------------------------
# Reference (torch)
# --------------------------------------------------------------------------------------------
def grid_and_strides(input_hw: tuple[int, int], strides: Sequence[int] = DETECTION_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """[A, 2] cell x, y and [A, 1] stride of every anchor: stride by stride, cells row by row."""
    grids, steps = [], []
    for s in strides:
        h, w = -(-input_hw[0] // s), -(-input_hw[1] // s)
        ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        grids.append(np.stack([xs.ravel(), ys.ravel()], 1))
        steps.append(np.full((h * w, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode(raw: np.ndarray, spec: DetectionSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """``ultralytics``/``yolox``/``yolov5`` detections -> pixel x1y1x2y2 [A, 4] and class scores [A, nc]."""
    t = torch.from_numpy(np.asarray(raw, np.float32))[0]
    if spec.format == "ultralytics":
        t = t.T
        xy, wh, scores = t[:, 0:2], t[:, 2:4], t[:, 4:]
        scores = scores if spec.activated else scores.sigmoid()
    elif spec.format in OBJECTNESS_FORMATS:
        xy, wh, obj, cls = t[:, 0:2], t[:, 2:4], t[:, 4:5], t[:, 5:]
        if not spec.decoded:
            grid, stride = (torch.from_numpy(a) for a in grid_and_strides(spec.input_hw, spec.strides))
            xy, wh = (xy + grid) * stride, wh.exp() * stride
        if not spec.activated:
            obj, cls = obj.sigmoid(), cls.sigmoid()
        scores = obj * cls
    else:
        raise ValueError(f"decode() reads the ultralytics, yolox and yolov5 formats, not {spec.format!r}")
    half = wh * 0.5
    return torch.cat([xy - half, xy + half], 1), scores


def _finish(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, spec: DetectionSpec) -> Instances:
    h, w = spec.input_hw
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    return Instances((boxes / scale).clamp(0.0, 1.0).numpy(), scores.numpy(), classes.to(torch.int64).numpy())


def reference_instances(raw: np.ndarray, spec: DetectionSpec, params: InstanceParams = InstanceParams()) -> Instances:
    """The person instances in detection tensor ``raw`` (see the module docstring)."""
    params.check(spec)
    persons = torch.tensor(params.person_classes, dtype=torch.int64)
    if spec.format in ROW_LAYOUTS:
        at = ROW_LAYOUTS[spec.format]
        rows = torch.from_numpy(np.asarray(raw, np.float32).reshape(-1, at.columns))
        cls, score = rows[:, at.classid].to(torch.int64), rows[:, at.score]
        keep = (score > params.score_threshold) & (cls[:, None] == persons[None]).any(1)
        rows, cls, score = rows[keep], cls[keep], score[keep]
        order = torch.argsort(score, descending=True, stable=True)[: params.max_instances]
        return _finish(rows[order, at.boxes:at.boxes + 4], score[order], cls[order], spec)
    boxes, scores = decode(raw, spec)
    person_scores = scores[:, persons]
    slot = person_scores.argmax(1)
    best = person_scores.gather(1, slot[:, None])[:, 0]
    keep = best > params.score_threshold
    boxes, best, slot = boxes[keep], best[keep], slot[keep]
    order = torchvision.ops.batched_nms(boxes, best, slot, params.iou_threshold)[: params.max_instances]
    return _finish(boxes[order], best[order], persons[slot[order]], spec)
