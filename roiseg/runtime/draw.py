"""Pictures and mask files of a prediction: the overlay, per-ROI class-id and target PNGs, written atomically.

ROIs (or detected persons) are numbered from 1 on the overlay and in file names; each one's target
mask and box get a colour of :data:`PALETTE_BGR` (cycled), non-target pixels are red.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence

import cv2
import numpy as np

from roiseg.conventions import NON_TARGET, TARGET
from roiseg.errors import InputError
from roiseg.utils.atomic import check_output_dir, check_output_file, ensure_writable_dir, write_bytes

PALETTE_BGR: tuple[tuple[int, int, int], ...] = (
    (60, 200, 60), (230, 160, 30), (40, 200, 230), (200, 80, 200), (30, 120, 250), (220, 220, 60),
)
"""Colour of each ROI's target mask and box (cycled)."""
NON_TARGET_BGR: tuple[int, int, int] = (40, 40, 220)
TARGET_ALPHA: float = 0.55
NON_TARGET_ALPHA: float = 0.35


class Drawable(Protocol):
    """What a picture needs of a prediction: ``rois_px`` [N, 4] pixel boxes, ``labels`` [N, H0, W0] class ids."""

    rois_px: np.ndarray
    labels: np.ndarray


def _blend(img: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float) -> None:
    if mask.any():
        img[mask] = ((1.0 - alpha) * img[mask] + alpha * np.asarray(colour, np.float32)).astype(np.uint8)


def draw_overlay(image_bgr: np.ndarray, pred: Drawable, captions: Sequence[str] | None = None) -> np.ndarray:
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


def save_masks(pred: Drawable, folder: str | Path, stem: str, kind: str = "roi") -> list[Path]:
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


