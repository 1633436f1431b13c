"""Checks an instance model's detections before it is written (``roiseg fuse --instances``).

A wrong detection format or a detector fed another preprocessing than it was trained on gives a
model that runs but finds nothing, or finds boxes a few pixels wide with scores above 1. The built
model is run on the check images (``--check-image``; a synthetic image by default) and its
detections are judged:

* scores outside [0, 1], or most boxes under :data:`MIN_BOX_PIXELS` on a side: impossible
  detections, an :class:`InputError` naming the likely cause (``--det-format``, ``--det-preprocessing``);
* no person on any of the user's check images: an :class:`InputError` naming the same causes;
* no check image given: the synthetic one shows no person, so a warning asks for a photo;
* a YOLOX-format detector fed roiseg's default RGB / 255 (YOLOX reads BGR 0..255): a warning.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx

import graph_tools as gt
from roiseg.conventions import FUSED_BOXES_OUTPUT, FUSED_SCORES_OUTPUT, ImageInput, Preprocessing
from roiseg.detection.props import InstanceProps
from roiseg.errors import InputError
from roiseg.export.options import FuseOptions
from roiseg.export.probes import model_feeds
from roiseg.runtime.metadata import FusedMetadata

MIN_BOX_PIXELS: float = 2.0
"""A detection narrower or lower than this many input pixels is degenerate."""
SCORE_SLACK: float = 1e-3
YOLOX_PREPROCESSING = Preprocessing(color="bgr", scale=1.0)


def _causes(props: InstanceProps, head_pre: Preprocessing) -> str:
    det_pre = props.det_preprocessing or head_pre
    return (f"the detection format ({props.spec.format}: --det-format), the detector's preprocessing (it reads "
            f"{det_pre.to_json()}: --det-preprocessing COLOR,SCALE), or the person classes "
            f"{list(props.params.person_classes)} (--person-classes)")


def _boxes_px(boxes: np.ndarray, meta: FusedMetadata, image_hw: tuple[int, int]) -> np.ndarray:
    """[K, 4] boxes in pixels of the image the model saw (normalised ones scaled by the input size)."""
    if ImageInput(meta.image_input) is ImageInput.RAW:
        return boxes
    h, w = meta.input_hw
    return boxes * np.array([w, h, w, h], np.float32)


def detections_on(model: onnx.ModelProto, meta: FusedMetadata, images: Sequence[str] | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(boxes px [K, 4], scores [K])`` of the model on each check image (the black image left out)."""
    names = [vi.name for vi in gt.graph_inputs(model)]
    feeds = model_feeds(meta.input_hw, meta.preprocessing, meta.image_input, names, images)[:-1]
    sess = gt.create_session(model, arena=False)
    out = []
    for feed in feeds:
        boxes, scores = sess.run([FUSED_BOXES_OUTPUT, FUSED_SCORES_OUTPUT], feed)
        hw = next(iter(feed.values())).shape[:2] if ImageInput(meta.image_input) is ImageInput.RAW else meta.input_hw
        out.append((_boxes_px(boxes, meta, hw), scores))
    return out


def check_detections(model: onnx.ModelProto, meta: FusedMetadata, props: InstanceProps, options: FuseOptions) -> list[str]:
    """Judge the model's detections on the check images (module docstring): warnings, or InputError."""
    found = detections_on(model, meta, [str(p) for p in options.check_images] if options.check_images else None)
    boxes = np.concatenate([b for b, _ in found]) if found else np.zeros((0, 4), np.float32)
    scores = np.concatenate([s for _, s in found]) if found else np.zeros((0,), np.float32)
    causes = _causes(props, meta.preprocessing)
    if scores.size and (scores.min() < -SCORE_SLACK or scores.max() > 1 + SCORE_SLACK):
        raise InputError(f"the instance model's detections look impossible: scores from {scores.min():.3g} to "
                         f"{scores.max():.3g}, outside [0, 1]; check {causes}")
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) if len(boxes) else boxes[:, 0]
    if len(sides) and np.mean(sides < MIN_BOX_PIXELS) > 0.5:
        raise InputError(f"the instance model's detections look impossible: {int(np.sum(sides < MIN_BOX_PIXELS))} of "
                         f"{len(sides)} boxes are under {MIN_BOX_PIXELS:g} px on a side; check {causes}")
    warnings = []
    if props.spec.format == "yolox" and props.det_preprocessing is None and meta.preprocessing != YOLOX_PREPROCESSING:
        warnings.append(f"the detector's output is in the YOLOX format and it reads the head's preprocessing "
                        f"{meta.preprocessing.to_json()}; YOLOX detectors are trained on BGR 0..255: if yours is one, "
                        "pass --det-preprocessing bgr,1")
    if options.check_images and not scores.size:
        raise InputError(f"the instance model finds no person on the check images "
                         f"({', '.join(str(p) for p in options.check_images)}); check {causes}")
    if not options.check_images:
        warnings.append("the instance model was checked on a synthetic image only, on which no detector finds a "
                        "person: pass --check-image PHOTO (with persons) to check its detections")
    return warnings
