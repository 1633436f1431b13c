"""The Python reference of the in-graph detection post-processing (torch, torchvision).

:func:`reference_instances`: decode to pixel x1, y1, x2, y2 (the format's :class:`~roiseg.detection.layouts.Layout`);
per detection the best of the person classes (first on ties); keep scores ``> score_threshold``;
``torchvision.ops.batched_nms`` (IoU threshold, per class); the ``max_instances`` best; normalise by
the input size and clip to [0, 1]. The row formats skip the suppression (done by the detector, or not
needed by its one-to-one head). Parity checks the ONNX graph (:mod:`roiseg.detection.graph`) against it.
The only module of :mod:`roiseg.detection` that imports torch.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision

from roiseg.detection.formats import DetectionSpec, InstanceParams, Instances, grid_and_strides
from roiseg.detection.layouts import LAYOUTS


def decode(raw: np.ndarray, spec: DetectionSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """A grid format's detections [1, ...] -> pixel x1y1x2y2 [A, 4] and class scores [A, nc]."""
    at = LAYOUTS[spec.format]
    if at.rows:
        raise ValueError(f"decode() reads the grid formats, not the {spec.format!r} rows")
    t = torch.from_numpy(np.asarray(raw, np.float32))[0]
    t = t.T if at.transposed else t
    xy, wh, scores = t[:, 0:2], t[:, 2:4], t[:, at.first_class:]
    if not spec.decoded:
        grid, stride = (torch.from_numpy(a) for a in grid_and_strides(spec.input_hw, spec.strides))
        xy, wh = (xy + grid) * stride, wh.exp() * stride
    if not spec.activated:
        scores = scores.sigmoid()
    if at.objectness:
        obj = t[:, 4:5]
        scores = (obj if spec.activated else obj.sigmoid()) * scores
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
    at = LAYOUTS[spec.format]
    if at.rows:
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
