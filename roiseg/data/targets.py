"""3-class ROI targets from instance masks (pure functions).

For a ROI whose own person is instance ``k``, on a grid of ``(H, W)`` pixels:

* ``TARGET`` (1) where instance ``k``'s mask is set and the pixel is inside the ROI;
* ``NON_TARGET`` (2) where any other instance's mask is set, ``k``'s is not, and the pixel is inside;
* ``BACKGROUND`` (0) everywhere else, including every pixel outside the ROI.

"Inside" is the pixel-centre rule of :func:`roiseg.conventions.roi_inside_mask`. ROIs are
normalised ``x1, y1, x2, y2``; masks are on the same grid as the targets (the dataset rasterises
at original resolution and resizes with nearest neighbour first).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from roiseg.conventions import BACKGROUND, NON_TARGET, TARGET, normalised_rois_to_pixels, roi_pixel_span


def roi_pixel_box(roi: Sequence[float], grid_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Normalised ROI -> pixel index box ``(y0, y1, x0, x1)`` (half-open) of the inside pixels."""
    roi_px = normalised_rois_to_pixels(np.asarray(roi, dtype=np.float32), grid_hw)[0]
    x0, x1 = roi_pixel_span(roi_px, grid_hw[1], 0)
    y0, y1 = roi_pixel_span(roi_px, grid_hw[0], 1)
    return y0, max(y1, y0), x0, max(x1, x0)


def roi_targets(masks: np.ndarray, rois: np.ndarray, owners: Sequence[int] | None = None) -> np.ndarray:
    """[K, H, W] bool instance masks + [M, 4] normalised ROIs -> [M, H, W] uint8 class ids.

    ``owners[m]`` is the index in ``masks`` of ROI ``m``'s own person (default: ``m``, i.e. one
    ROI per instance in the same order). Work is done on each ROI's crop only.
    """
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [K, H, W], got shape {masks.shape}")
    rois = np.asarray(rois, dtype=np.float32).reshape(-1, 4)
    owners = list(range(len(rois))) if owners is None else list(owners)
    if len(owners) != len(rois):
        raise ValueError(f"{len(rois)} ROIs but {len(owners)} owners")
    grid_hw = masks.shape[1:]
    coverage = masks.sum(axis=0, dtype=np.int32)  # number of instances covering each pixel
    out = np.full((len(rois), *grid_hw), BACKGROUND, dtype=np.uint8)
    for m, (roi, k) in enumerate(zip(rois, owners)):
        y0, y1, x0, x1 = roi_pixel_box(roi, grid_hw)
        own = masks[k, y0:y1, x0:x1]
        others = (coverage[y0:y1, x0:x1] - own) > 0
        crop = out[m, y0:y1, x0:x1]
        crop[others] = NON_TARGET
        crop[own] = TARGET
    return out


def hflip_rois(rois: np.ndarray) -> np.ndarray:
    """Normalised ``x1, y1, x2, y2`` boxes of a horizontally mirrored image: [K, 4] -> [K, 4] float32."""
    r = np.asarray(rois, dtype=np.float32).reshape(-1, 4)
    return np.stack([1.0 - r[:, 2], r[:, 1], 1.0 - r[:, 0], r[:, 3]], axis=1).astype(np.float32)


def jitter_rois(
    rois: np.ndarray, jitter: float, rng: np.random.Generator, grid_hw: tuple[int, int]
) -> np.ndarray:
    """Randomly scale and shift normalised ROIs for training; [K, 4] -> [K, 4] float32.

    Width and height are scaled by a factor in ``[1 - jitter, 1 + jitter]``, the centre is moved
    by up to ``jitter`` times the width/height, and the box is clipped to ``[0, 1]``. A result
    that would contain no pixel centre of ``grid_hw`` is replaced by the original ROI, so a
    jittered ROI is never empty when the original is not. ``jitter == 0`` returns a copy.
    Always draws ``4 K`` numbers, so the stream does not depend on the outcome.
    """
    rois = np.asarray(rois, dtype=np.float32).reshape(-1, 4)
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    scale = rng.uniform(1.0 - jitter, 1.0 + jitter, size=(len(rois), 2))
    shift = rng.uniform(-jitter, jitter, size=(len(rois), 2))
    if jitter == 0:
        return rois.copy()
    size = rois[:, 2:] - rois[:, :2]
    centre = (rois[:, :2] + rois[:, 2:]) / 2.0 + shift * size
    half = size * scale / 2.0
    out = np.clip(np.concatenate([centre - half, centre + half], axis=1), 0.0, 1.0).astype(np.float32)
    for k in range(len(out)):
        y0, y1, x0, x1 = roi_pixel_box(out[k], grid_hw)
        if y1 <= y0 or x1 <= x0:
            out[k] = rois[k]
    return out


def boxes_overlap(rois: np.ndarray) -> bool:
    """True when two of the [K, 4] normalised ``x1, y1, x2, y2`` boxes intersect with a positive area."""
    r = np.asarray(rois, dtype=np.float64).reshape(-1, 4)
    w = np.minimum(r[:, None, 2], r[None, :, 2]) - np.maximum(r[:, None, 0], r[None, :, 0])
    h = np.minimum(r[:, None, 3], r[None, :, 3]) - np.maximum(r[:, None, 1], r[None, :, 1])
    both = (w > 0) & (h > 0)
    np.fill_diagonal(both, False)
    return bool(both.any())
