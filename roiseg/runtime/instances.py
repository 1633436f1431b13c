"""Run an instance model (``roiseg fuse --instances``) on an image: the persons it finds, masks at the original size.

:class:`InstancePredictor` is the one way roiseg runs such a model (``predict`` without ``--roi``); the
model runs in a :class:`~roiseg.runtime.session.FusedSession` (the image fed as its metadata says);
``boxes`` come back in pixels of the original image, the ``[K, 3, H, W]`` probabilities at the original
``(H0, W0)`` (:func:`~roiseg.runtime.session.to_original_size`). Instances are numbered from 1, best
score first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from roiseg.conventions import read_user_image
from roiseg.errors import InputError
from roiseg.runtime.draw import check_outputs, draw_overlay, save_masks, write_image
from roiseg.runtime.metadata import read_metadata
from roiseg.runtime.session import FusedSession, to_original_size


@dataclass
class InstancePrediction:
    """The persons found on one image, best first: ``rois_px`` [K, 4] pixel x1y1x2y2 of the original
    image, ``scores`` [K], ``classes`` [K] (the detector's class ids), ``probs`` [K, 3, H0, W0],
    ``labels`` [K, H0, W0] uint8 class ids."""

    rois_px: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    probs: np.ndarray
    labels: np.ndarray


def is_instance_model(model: str | Path) -> bool:
    """Whether ``model`` is a roiseg instance model (InputError when it is no roiseg model at all)."""
    return read_metadata(model).is_instance_model


class InstancePredictor:
    """An instance model (:class:`FusedSession`): ``predict(image_bgr)`` -> :class:`InstancePrediction`."""

    def __init__(self, model: str | Path | FusedSession, device: str = "auto") -> None:
        self.fused = model if isinstance(model, FusedSession) else FusedSession(model, device)
        if not self.fused.is_instance_model:
            raise InputError(f"{self.fused.path} is a ROI model (images + rois); it needs boxes (predict --roi)")

    def predict(self, image_bgr: np.ndarray) -> InstancePrediction:
        """The persons on an [H0, W0, 3] uint8 BGR image, masks at ``(H0, W0)``."""
        orig_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
        found = self.fused.instances(self.fused.image_feed(image_bgr), orig_hw)
        probs, labels = to_original_size(found.masks, orig_hw)
        return InstancePrediction(found.boxes, found.scores, found.classes, probs, labels)


def predict_instances(model: str | Path | FusedSession, image: str | Path, out: str | Path | None = None,
                      masks_dir: str | Path | None = None, device: str = "auto") -> tuple[InstancePrediction, list[Path]]:
    """Library function behind ``roiseg predict`` on an instance model: the prediction and the files
    written (the overlay: every person's box, mask and ``#i score``; per person ``<stem>_person<i>_*.png``).
    ``model``: an instance model's file, or its open :class:`FusedSession` (reused as it is)."""
    check_outputs(out, masks_dir, Path(image).stem, 0)
    bgr = read_user_image(image)
    pred = InstancePredictor(model, device).predict(bgr)
    written: list[Path] = []
    if out is not None:
        captions = [f"#{i} {s:.2f}" for i, s in enumerate(pred.scores, start=1)]
        written.append(write_image(out, draw_overlay(bgr, pred, captions)))
    if masks_dir is not None:
        written += save_masks(pred, masks_dir, Path(image).stem, kind="person")
    return pred, written
