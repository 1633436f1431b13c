"""Run a fused model on one image with pixel ROIs; masks back at the original size; an overlay.

ROIs are given in pixels of the original image (``x1, y1, x2, y2``). They are clipped to the image
(with a warning) and normalised to the model's ``rois`` format; a ROI that is empty after clipping
is refused; ROIs are numbered from 1 in messages, on the overlay and in mask file names. The image
is preprocessed as the model's metadata says (``roiseg.preprocessing``). The model returns
per-class probabilities [N, 3, H, W] at its input size; each ROI's three maps are resized to the
original ``(H0, W0)`` bilinearly (``cv2.resize``) and the class is their argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from graph_tools import create_session
from roiseg.deploy.metadata import FusedMetadata, read_metadata
from roiseg.conventions import (
    DEFAULT_IMAGE_INPUT, FUSED_MASKS_OUTPUT, FUSED_ROIS_INPUT, RAW_IMAGE_INPUT, NON_TARGET, TARGET, normalised_rois_to_pixels, pixel_rois_to_normalised,
    preprocess, read_image,
)
from roiseg.errors import InputError, graph_errors
from roiseg.deploy.engines import TRT_ROIS, trt_profiles
from roiseg.features.providers import choose_providers
from roiseg.utils.atomic import check_output_dir, check_output_file, ensure_writable_dir, write_bytes
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

PALETTE_BGR: tuple[tuple[int, int, int], ...] = (
    (60, 200, 60), (230, 160, 30), (40, 200, 230), (200, 80, 200), (30, 120, 250), (220, 220, 60),
)
"""Colour of each ROI's target mask and box (cycled)."""
NON_TARGET_BGR: tuple[int, int, int] = (40, 40, 220)
TARGET_ALPHA: float = 0.55
NON_TARGET_ALPHA: float = 0.35


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


# --------------------------------------------------------------------------------------------
# Masks at the original size
# --------------------------------------------------------------------------------------------
def masks_to_original(probs: np.ndarray, orig_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """[N, K, H, W] probabilities -> ([N, K, H0, W0] bilinear-resized probabilities, [N, H0, W0] uint8 argmax)."""
    h0, w0 = orig_hw
    n, k = probs.shape[:2]
    out = np.empty((n, k, h0, w0), dtype=np.float32)
    for i in range(n):
        hwk = np.ascontiguousarray(probs[i].transpose(1, 2, 0))
        resized = cv2.resize(hwk, (w0, h0), interpolation=cv2.INTER_LINEAR)
        out[i] = resized.reshape(h0, w0, k).transpose(2, 0, 1)
    return out, out.argmax(axis=1).astype(np.uint8)


@dataclass
class Prediction:
    """Result for one image. ``rois_px``: [N, 4] clipped pixel boxes; ``probs``: [N, 3, H0, W0];
    ``labels``: [N, H0, W0] uint8 class ids at the original size; ``warnings``: clipping notes."""

    rois_px: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    warnings: list[str] = field(default_factory=list)


class FusedPredictor:
    """A fused model in onnxruntime: ``predict(image_bgr, rois_px)`` -> :class:`Prediction`."""

    def __init__(self, model: str | Path, device: str = "auto", trt_rois: Sequence[int] = TRT_ROIS) -> None:
        self.path = Path(model)
        self.meta: FusedMetadata = read_metadata(self.path)
        choice = choose_providers(device, trt_profiles=trt_profiles(self.meta.input_hw, self.meta.image_input, trt_rois))
        with graph_errors():
            self.session = create_session(self.path, choice.providers)
        names = {i.name for i in self.session.get_inputs()}
        self.raw = self.meta.image_input == "raw"
        image_input = RAW_IMAGE_INPUT if self.raw else DEFAULT_IMAGE_INPUT
        if names != {image_input, FUSED_ROIS_INPUT}:
            raise InputError(f"{self.path} has inputs {sorted(names)}; expected {image_input} and rois")
        if "probs" not in self.meta.outputs:
            raise InputError(f"{self.path} has no probabilities output (its outputs: {', '.join(self.meta.outputs)}); "
                             "fuse it with the probs output to predict with it")

    def predict(self, image_bgr: np.ndarray, rois_px: np.ndarray) -> Prediction:
        """[H0, W0, 3] uint8 BGR image + [N, 4] pixel boxes on it -> masks at ``(H0, W0)``."""
        orig_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
        clipped, notes = clip_rois(rois_px, orig_hw)
        for note in notes:
            LOG.warning(note)
        rois = pixel_rois_to_normalised(clipped, orig_hw)
        if self.raw:  # the model preprocesses and pastes at the original size itself
            feeds = {RAW_IMAGE_INPUT: np.ascontiguousarray(image_bgr, np.uint8), FUSED_ROIS_INPUT: rois}
            full = self.session.run([FUSED_MASKS_OUTPUT], feeds)[0]
            labels = full.argmax(axis=1).astype(np.uint8)
        else:
            feeds = {DEFAULT_IMAGE_INPUT: preprocess(image_bgr, self.meta.input_hw, self.meta.preprocessing),
                     FUSED_ROIS_INPUT: rois}
            full, labels = masks_to_original(self.session.run([FUSED_MASKS_OUTPUT], feeds)[0], orig_hw)
        return Prediction(clipped, full, labels, notes)


# --------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------
def _blend(img: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float) -> None:
    if mask.any():
        img[mask] = ((1.0 - alpha) * img[mask] + alpha * np.asarray(colour, np.float32)).astype(np.uint8)


def draw_overlay(image_bgr: np.ndarray, pred: Prediction, captions: Sequence[str] | None = None) -> np.ndarray:
    """Copy of the image with each ROI's box, its target mask (ROI colour) and non-target pixels (red);
    each box captioned ``captions[i]`` (default ``#i``, from 1)."""
    out = image_bgr.copy()
    for i, labels in enumerate(pred.labels):
        _blend(out, labels == NON_TARGET, NON_TARGET_BGR, NON_TARGET_ALPHA)
        _blend(out, labels == TARGET, PALETTE_BGR[i % len(PALETTE_BGR)], TARGET_ALPHA)
    thickness = max(1, round(max(out.shape[:2]) / 400))
    for i, box in enumerate(pred.rois_px):
        colour = PALETTE_BGR[i % len(PALETTE_BGR)]
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
        cv2.rectangle(out, (x1, y1), (max(x2 - 1, x1), max(y2 - 1, y1)), colour, thickness)
        caption = captions[i] if captions is not None else f"#{i + 1}"
        cv2.putText(out, caption, (x1 + 2, max(y1 + 14, 14)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return out


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Encode ``image`` in the format of the path's suffix (PNG when none) and write it atomically."""
    suffix = Path(path).suffix.lower() or ".png"
    try:
        ok, buf = cv2.imencode(suffix, image)
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"cannot write an image as {suffix!r}: {path} (use .png or .jpg)")
    return write_bytes(path, buf.tobytes())


def save_masks(pred: Prediction, folder: str | Path, stem: str, kind: str = "roi") -> list[Path]:
    """Per ROI ``<stem>_roi<i>_classes.png`` (class ids 0/1/2) and ``<stem>_roi<i>_target.png`` (0/255), ``i``
    from 1 (``kind`` replaces ``roi``: ``person`` for the instances an instance model found)."""
    folder = ensure_writable_dir(folder)
    names = mask_file_names(stem, len(pred.labels), kind)
    written = []
    for labels, classes_name, target_name in zip(pred.labels, names[0::2], names[1::2]):
        written.append(write_image(folder / classes_name, labels))
        written.append(write_image(folder / target_name, np.where(labels == TARGET, 255, 0).astype(np.uint8)))
    return written


def mask_file_names(stem: str, n: int, kind: str = "roi") -> list[str]:
    """The file names :func:`save_masks` writes for ``n`` ROIs of an image named ``stem``."""
    return [f"{stem}_{kind}{i}_{what}.png" for i in range(1, n + 1) for what in ("classes", "target")]


def check_outputs(out: str | Path | None, masks_dir: str | Path | None, stem: str, n: int) -> None:
    """InputError, before any work, when the overlay file or a mask file cannot be written."""
    if out is not None:
        check_output_file(out)
    if masks_dir is not None:
        check_output_dir(masks_dir)
        for name in mask_file_names(stem, n):
            check_output_file(Path(masks_dir) / name)


def predict_image(
    model: str | Path,
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
    Every output path is checked before the image or the model is read.
    """
    check_outputs(out, masks_dir, Path(image).stem, len(rois_px))
    try:
        bgr = read_image(image)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    if normalized:
        rois_px = normalised_rois_to_pixels(np.asarray(rois_px, dtype=np.float32), bgr.shape[:2])
    clip_rois(np.asarray(rois_px, dtype=np.float32), bgr.shape[:2])  # refuse bad ROIs before loading the model
    pred = FusedPredictor(model, device, trt_rois).predict(bgr, np.asarray(rois_px, dtype=np.float32))
    written: list[Path] = []
    if out is not None:
        written.append(write_image(out, draw_overlay(bgr, pred)))
    if masks_dir is not None:
        written += save_masks(pred, masks_dir, Path(image).stem)
    return pred, written
