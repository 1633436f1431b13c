"""Class probabilities from whichever mask output a fused model has (``fuse --outputs``).

Every output mode can feed ``predict`` and ``evaluate``; the one used is, in this order of preference
(:data:`MASK_SOURCES`):

* ``probs``: the ``masks`` [N, 3, h, w] probabilities as they are;
* ``roi_logits``: the ``roi_logits`` [N, 3, M, M] ROI-grid logits pasted here as the graph pastes them
  (``roiseg.modeling.paste``: bilinear resampling of the grid at every pixel centre, border clamp,
  softmax, background with p = 1 outside the half-open box of ``roi_boxes``): the same probabilities
  within float rounding;
* ``target``: the ``target`` [N, h, w] probability; background = 1 - target, non-target unknown (0);
* ``labels``: the ``labels`` [N, h, w] class ids as one-hot probabilities (a score from them is 1).

``h, w``: the model's input size, or the original image size for a raw-image model. Numpy only.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from roiseg.conventions import (
    BACKGROUND, FUSED_LABELS_OUTPUT, FUSED_MASKS_OUTPUT, FUSED_ROI_BOXES_OUTPUT, FUSED_ROI_LOGITS_OUTPUT,
    FUSED_TARGET_OUTPUT, NUM_CLASSES, TARGET,
)
from roiseg.errors import InputError

MASK_SOURCES: tuple[str, ...] = ("probs", "roi_logits", "target", "labels")
"""Output modes that give masks, best first."""
SOURCE_NOTES: dict[str, str] = {
    "probs": "the masks output (class probabilities)",
    "roi_logits": "the roi_logits output, pasted and softmaxed here as in the graph",
    "target": "the target output (target probability; non-target not available)",
    "labels": "the labels output (class ids; scores fixed at 1)",
}
MIN_ROI_PIXELS: float = 1e-3
"""Floor on a ROI's width/height in pixels (as the graph's paste)."""


def mask_source(outputs: Sequence[str]) -> str:
    """The output mode masks are read from (:data:`MASK_SOURCES`); InputError when the model has none."""
    for mode in MASK_SOURCES:
        if mode in outputs:
            return mode
    raise InputError(f"the model has no mask output (its outputs: {', '.join(outputs)})")


def _interp(lo: np.ndarray, hi: np.ndarray, size: int, grid: int) -> np.ndarray:
    """[N, size, grid] bilinear weights from a ``grid``-cell ROI axis (edges ``lo``, ``hi`` [N] pixels) to pixel centres."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    extent = np.maximum(hi - lo, MIN_ROI_PIXELS)
    src = np.clip((centres[None] - lo[:, None]) / extent[:, None] * grid - 0.5, 0.0, grid - 1.0)
    return np.maximum(1.0 - np.abs(src[:, :, None] - np.arange(grid, dtype=np.float32)), 0.0)


def _inside(lo: np.ndarray, hi: np.ndarray, size: int) -> np.ndarray:
    """[N, size] bool: pixel centres of one axis inside each half-open ROI edge pair ``[lo, hi)`` (pixels)."""
    centres = np.arange(size, dtype=np.float32) + 0.5
    return (centres[None] >= lo[:, None]) & (centres[None] < hi[:, None])


def _span(inside: np.ndarray) -> slice:
    """[size] bool, one run of True (a box's pixels along an axis) -> the slice of that run (empty when none)."""
    idx = np.flatnonzero(inside)
    return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)


def paste_probabilities(roi_logits: np.ndarray, rois: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """[N, 3, M, M] ROI-grid logits + [N, 4] normalised x1y1x2y2 -> [N, 3, H, W] class probabilities (module docstring).

    The grid is resampled and softmaxed only over each box's own pixels (outside it the probabilities are the
    background one-hot anyway), so the cost per ROI follows the box's area, not the image's.
    """
    h, w = hw
    px = np.asarray(rois, np.float32) * np.array([w, h, w, h], np.float32)
    m_h, m_w = roi_logits.shape[-2:]
    wy, wx = _interp(px[:, 1], px[:, 3], h, m_h), _interp(px[:, 0], px[:, 2], w, m_w)
    in_y, in_x = _inside(px[:, 1], px[:, 3], h), _inside(px[:, 0], px[:, 2], w)
    out = np.zeros((len(px), NUM_CLASSES, h, w), np.float32)
    out[:, BACKGROUND] = 1.0
    for n in range(len(px)):
        rows, cols = _span(in_y[n]), _span(in_x[n])
        if rows.stop == rows.start or cols.stop == cols.start:
            continue
        logits = np.matmul(np.matmul(wy[n, rows], roi_logits[n].astype(np.float32)), wx[n, cols].T)  # [3, h', w']
        logits -= logits.max(axis=0, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=0, keepdims=True)
        out[n, :, rows, cols] = probs
    return out


def probabilities_from(outputs: Mapping[str, np.ndarray], source: str, hw: tuple[int, int]) -> np.ndarray:
    """[N, 3, h, w] float32 class probabilities from ``outputs`` (tensor name -> array) of mode ``source``."""
    if source == "probs":
        return np.asarray(outputs[FUSED_MASKS_OUTPUT], np.float32)
    if source == "roi_logits":
        return paste_probabilities(outputs[FUSED_ROI_LOGITS_OUTPUT], outputs[FUSED_ROI_BOXES_OUTPUT], hw)
    if source == "target":
        target = np.asarray(outputs[FUSED_TARGET_OUTPUT], np.float32)
        probs = np.zeros((target.shape[0], NUM_CLASSES, *target.shape[1:]), np.float32)
        probs[:, BACKGROUND], probs[:, TARGET] = 1.0 - target, target
        return probs
    if source == "labels":
        labels = np.asarray(outputs[FUSED_LABELS_OUTPUT])
        return (labels[:, None] == np.arange(NUM_CLASSES).reshape(1, -1, 1, 1)).astype(np.float32)
    raise InputError(f"unknown mask source {source!r}; expected one of {', '.join(MASK_SOURCES)}")
