"""Scale augmentation: a train image seen through a zoom window (pure functions but the warps).

A *window* ``(x0, y0, w, h)`` is a rectangle in the original image's pixel coordinates (edges, not
centres: the image spans ``[0, W0] x [0, H0]``). It may reach past the image (zoom out: the outside
is filled with the detector's letterbox grey) or lie inside it (zoom in: a crop). The window is
mapped onto the model input ``(H, W)``, so a person in a window half the image's size appears at twice
the size. Images are warped bilinearly, instance masks with nearest neighbour, ROIs (normalised
``x1, y1, x2, y2``) by the same affine map and clipped to ``[0, 1]``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from roiseg.data.targets import roi_pixel_box

PAD_VALUE: int = 114
"""Fill of the image outside the original (the letterbox grey YOLO detectors are trained with)."""

MIN_VISIBLE: float = 0.25
"""A ROI stays in a zoomed item when at least this share of its box is inside the window."""

Window = tuple[float, float, float, float]


def zoom_window(rng: np.random.Generator, image_hw: tuple[int, int], zoom: float) -> Window:
    """A random window ``(x0, y0, w, h)`` in original pixels for a zoom factor drawn log-uniformly in
    ``[1 / (1 + zoom), 1 + zoom]`` (> 1: zoom in), at a uniform position. Always draws 3 numbers."""
    if zoom < 0:
        raise ValueError(f"zoom must be >= 0, got {zoom}")
    h0, w0 = float(image_hw[0]), float(image_hw[1])
    log_s, u, v = rng.uniform(-1.0, 1.0), rng.uniform(), rng.uniform()
    s = math.exp(log_s * math.log1p(zoom))
    w, h = w0 / s, h0 / s
    x0 = min(0.0, w0 - w) + u * abs(w0 - w)
    y0 = min(0.0, h0 - h) + v * abs(h0 - h)
    return x0, y0, w, h


def window_affine(window: Window, out_hw: tuple[int, int]) -> np.ndarray:
    """[2, 3] float64 affine map (``cv2.warpAffine`` convention: pixel ``i`` at coordinate ``i``) from
    original pixels to output pixels that sends the window's edges onto the output's edges."""
    x0, y0, w, h = window
    sx, sy = out_hw[1] / w, out_hw[0] / h
    return np.array([[sx, 0.0, (0.5 - x0) * sx - 0.5], [0.0, sy, (0.5 - y0) * sy - 0.5]], dtype=np.float64)


def zoom_image(bgr: np.ndarray, window: Window, out_hw: tuple[int, int]) -> np.ndarray:
    """[H0, W0, 3] uint8 -> [H, W, 3] uint8: the window resampled bilinearly, grey outside the image."""
    return cv2.warpAffine(bgr, window_affine(window, out_hw), (out_hw[1], out_hw[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(PAD_VALUE,) * 3)


def zoom_masks(masks: np.ndarray, window: Window, out_hw: tuple[int, int]) -> np.ndarray:
    """[K, H0, W0] bool instance masks -> [K, H, W] bool (nearest neighbour, empty outside the image)."""
    m = window_affine(window, out_hw)
    size = (out_hw[1], out_hw[0])
    out = [cv2.warpAffine(k.astype(np.uint8), m, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0) for k in masks]
    return np.stack(out).astype(bool) if out else np.zeros((0, *out_hw), dtype=bool)


def zoom_rois(rois: np.ndarray, window: Window, image_hw: tuple[int, int],
              out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """[K, 4] normalised boxes of the original image -> ([K, 4] float32 normalised boxes of the window,
    clipped to [0, 1]; [K] bool: kept, i.e. at least :data:`MIN_VISIBLE` of the box is inside the window and
    the box holds a pixel centre of the ``out_hw`` input grid)."""
    x0, y0, w, h = window
    r = np.asarray(rois, dtype=np.float64).reshape(-1, 4)
    px = r * np.array([image_hw[1], image_hw[0], image_hw[1], image_hw[0]], dtype=np.float64)
    moved = (px - np.array([x0, y0, x0, y0])) / np.array([w, h, w, h])
    clipped = np.clip(moved, 0.0, 1.0)
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    out = clipped.astype(np.float32)
    keep = (visible >= MIN_VISIBLE * np.maximum(area, 1e-12)) & (visible > 0)
    for k in np.flatnonzero(keep):
        top, bottom, left, right = roi_pixel_box(out[k], out_hw)
        keep[k] = bottom > top and right > left
    return out, keep


__all__ = ["MIN_VISIBLE", "PAD_VALUE", "Window", "window_affine", "zoom_image", "zoom_masks", "zoom_rois",
           "zoom_window"]
