"""Run a fused model on one image with pixel ROIs; masks back at the original size; an overlay.

ROIs are given in pixels of the original image (``x1, y1, x2, y2``). They are clipped to the image
(with a warning) and normalised to the model's ``rois`` format; a ROI that is empty after clipping
is refused; ROIs are numbered from 1 in messages, on the overlay and in mask file names. The model
runs in a :class:`~roiseg.runtime.session.FusedSession` (the image fed as its metadata says); its
per-class probabilities come back at the original ``(H0, W0)``
(:func:`~roiseg.runtime.session.to_original_size`: bilinear, then argmax).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from roiseg.conventions import normalised_rois_to_pixels, pixel_rois_to_normalised, read_user_image
from roiseg.errors import InputError
from roiseg.runtime.draw import check_outputs, draw_overlay, save_masks, write_image
from roiseg.runtime.engines import TRT_ROIS
from roiseg.runtime.session import FusedSession, to_original_size
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)


# --------------------------------------------------------------------------------------------
# ROIs
# --------------------------------------------------------------------------------------------
def parse_roi(text: str) -> tuple[float, float, float, float]:
    """``"x1,y1,x2,y2"`` (pixels) -> 4 floats; InputError naming the text otherwise."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise InputError(f"ROI {text!r}: expected four numbers x1,y1,x2,y2 in pixels")
    return values  # type: ignore[return-value]


def clip_rois(rois_px: np.ndarray, image_hw: tuple[int, int]) -> tuple[np.ndarray, list[str]]:
    """Clip [N, 4] pixel ``x1, y1, x2, y2`` boxes to an image of ``(H, W)``.

    Returns the clipped boxes and one warning per box that was changed. InputError for a box that
    is empty (``x2 <= x1`` or ``y2 <= y1``) before or after clipping. Messages number ROIs from 1.
    """
    h, w = image_hw
    rois = np.asarray(rois_px, dtype=np.float32).reshape(-1, 4)
    if len(rois) == 0:
        raise InputError("no ROI given: at least one x1,y1,x2,y2 box in pixels is needed")
    clipped = rois.copy()
    clipped[:, [0, 2]] = np.clip(rois[:, [0, 2]], 0.0, float(w))
    clipped[:, [1, 3]] = np.clip(rois[:, [1, 3]], 0.0, float(h))
    notes = []
    for i, (orig, new) in enumerate(zip(rois, clipped), start=1):
        text = ",".join(f"{v:g}" for v in orig)
        if orig[2] <= orig[0] or orig[3] <= orig[1]:
            raise InputError(f"ROI #{i} ({text}) is empty: needs x2 > x1 and y2 > y1")
        if new[2] <= new[0] or new[3] <= new[1]:
            raise InputError(f"ROI #{i} ({text}) lies outside the {w}x{h} image")
        if not np.array_equal(orig, new):
            notes.append(f"ROI #{i} ({text}) extends outside the {w}x{h} image; clipped to "
                         + ",".join(f"{v:g}" for v in new))
    return clipped, notes


@dataclass
class Prediction:
    """Result for one image. ``rois_px``: [N, 4] clipped pixel boxes; ``probs``: [N, 3, H0, W0];
    ``labels``: [N, H0, W0] uint8 class ids at the original size; ``warnings``: clipping notes."""

    rois_px: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    warnings: list[str] = field(default_factory=list)


class RoiPredictor:
    """A ROI model (:class:`FusedSession`): ``predict(image_bgr, rois_px)`` -> :class:`Prediction`."""

    def __init__(self, model: str | Path | FusedSession, device: str = "auto", trt_rois: Sequence[int] = TRT_ROIS) -> None:
        self.fused = model if isinstance(model, FusedSession) else FusedSession(model, device, trt_rois)
        if self.fused.is_instance_model:
            raise InputError(f"{self.fused.path} is an instance model: it finds the persons itself (no ROIs)")

    def predict(self, image_bgr: np.ndarray, rois_px: np.ndarray) -> Prediction:
        """[H0, W0, 3] uint8 BGR image + [N, 4] pixel boxes on it -> masks at ``(H0, W0)``."""
        orig_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
        clipped, notes = clip_rois(rois_px, orig_hw)
        for note in notes:
            LOG.warning(note)
        rois = pixel_rois_to_normalised(clipped, orig_hw)
        probs = self.fused.roi_probabilities(self.fused.image_feed(image_bgr), rois)
        full, labels = to_original_size(probs, orig_hw)
        return Prediction(clipped, full, labels, notes)


def predict_image(
    model: str | Path | FusedSession,
    image: str | Path,
    rois_px: Sequence[Sequence[float]],
    out: str | Path | None = None,
    masks_dir: str | Path | None = None,
    device: str = "auto",
    normalized: bool = False,
    trt_rois: Sequence[int] = TRT_ROIS,
) -> tuple[Prediction, list[Path]]:
    """Library function behind ``roiseg predict``: returns the prediction and the files written.

    ``rois_px``: pixel boxes of the image, or normalised ``[0, 1]`` boxes when ``normalized``.
    ``model``: a fused ROI model's file, or its open :class:`FusedSession` (reused as it is).
    Every output path is checked before the image or the model is read.
    """
    check_outputs(out, masks_dir, Path(image).stem, len(rois_px))
    bgr = read_user_image(image)
    if normalized:
        rois_px = normalised_rois_to_pixels(np.asarray(rois_px, dtype=np.float32), bgr.shape[:2])
    clip_rois(np.asarray(rois_px, dtype=np.float32), bgr.shape[:2])  # refuse bad ROIs before loading the model
    pred = RoiPredictor(model, device, trt_rois).predict(bgr, np.asarray(rois_px, dtype=np.float32))
    written: list[Path] = []
    if out is not None:
        written.append(write_image(out, draw_overlay(bgr, pred)))
    if masks_dir is not None:
        written += save_masks(pred, masks_dir, Path(image).stem)
    return pred, written
