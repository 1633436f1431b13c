"""Per-ROI mask metrics on numpy arrays (OpenCV for the erosion): what ``roiseg evaluate`` computes, no torch.

The same definitions and the same numbers as the torch implementation that training validation uses
(:mod:`roiseg.metrics.masks`, which documents them; ``tests/test_mask_metrics.py`` checks that both
agree): per-ROI IoU of a class from a confusion histogram, IoU of two masks, and Boundary IoU
(Cheng et al. 2021: a boundary is the mask minus its erosion by a ``(2d+1) x (2d+1)`` square, the
outside of the image counting as background, ``d`` from :func:`boundary_dilation`).
Every function takes a batch of ROIs as ``[N, H, W]`` arrays on one pixel grid and returns per-ROI
counts (int64) or IoUs (float64, NaN where the union is empty).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from roiseg.conventions import NUM_CLASSES

DEFAULT_DILATION_RATIO: float = 0.02
"""Boundary width as a fraction of the image diagonal (Cheng et al. 2021)."""


def boundary_dilation(image_hw: tuple[int, int], dilation_ratio: float = DEFAULT_DILATION_RATIO) -> int:
    """Boundary width ``d`` in pixels: ``max(1, round(dilation_ratio * sqrt(H**2 + W**2)))``.

    ``image_hw`` is the *whole* image (or model input) ``(H, W)``, also when masks are cropped.
    Rounds like the reference (Python ``round``).
    """
    if dilation_ratio <= 0:
        raise ValueError(f"dilation_ratio must be > 0, got {dilation_ratio}")
    return max(1, int(round(dilation_ratio * math.hypot(int(image_hw[0]), int(image_hw[1])))))


def _check_pair(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.ndim != 3 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be [N, H, W], got {pred.shape} and {target.shape}")


def per_roi_confusion(pred: np.ndarray, target: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """[N, C, C] int64 pixel counts, ``[n, t, p]`` = pixels of ROI ``n`` with target class ``t`` predicted as ``p``.

    ``pred``/``target``: [N, H, W] class ids in ``0..num_classes-1`` (ValueError otherwise).
    """
    _check_pair(pred, target)
    for name, arr in (("pred", pred), ("targets", target)):
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= num_classes):
            raise ValueError(f"{name} holds class ids outside 0..{num_classes - 1}")
    n, bins = pred.shape[0], num_classes * num_classes
    pairs = target.reshape(n, -1).astype(np.int64) * num_classes + pred.reshape(n, -1)
    offsets = (np.arange(n, dtype=np.int64) * bins)[:, None]
    return np.bincount((pairs + offsets).ravel(), minlength=n * bins).reshape(n, num_classes, num_classes)


def class_intersection_union(confusion: np.ndarray, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """([N] ``|P & G|``, [N] ``|P | G|``) of class ``cls`` from a [N, C, C] :func:`per_roi_confusion`."""
    inter = confusion[:, cls, cls]
    return inter, confusion[:, cls, :].sum(1) + confusion[:, :, cls].sum(1) - inter


def intersection_union(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([N] int64 ``|P & G|``, [N] int64 ``|P | G|``) of two [N, H, W] bool masks."""
    _check_pair(pred, gt)
    pred, gt = pred.astype(bool).reshape(len(pred), -1), gt.astype(bool).reshape(len(gt), -1)
    return np.count_nonzero(pred & gt, axis=1).astype(np.int64), np.count_nonzero(pred | gt, axis=1).astype(np.int64)


def iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """[N] float64 ``inter / union``; NaN where ``union == 0``."""
    inter, union = np.asarray(inter, np.float64), np.asarray(union, np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1.0), math.nan)


def mask_boundary(mask: np.ndarray, dilation: int) -> np.ndarray:
    """[H, W] bool boundary of one mask: its pixels within ``dilation`` pixels of background or the border."""
    if dilation < 1:
        raise ValueError(f"dilation must be >= 1 pixel, got {dilation}")
    kernel = np.ones((2 * dilation + 1, 2 * dilation + 1), dtype=np.uint8)
    eroded = cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return mask.astype(bool) & ~eroded.astype(bool)


def boundary_intersection_union(pred: np.ndarray, gt: np.ndarray, dilation: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-ROI Boundary IoU counts ([N] int64 ``|Bp & Bg|``, [N] int64 ``|Bp | Bg|``) of two [N, H, W] bool
    masks, each ROI computed on the bounding box of ``pred | gt`` (exact: both are empty outside it, and
    the image border pads with background too)."""
    _check_pair(pred, gt)
    inter = np.zeros(len(pred), dtype=np.int64)
    union = np.zeros(len(pred), dtype=np.int64)
    for k in range(len(pred)):
        both = pred[k].astype(bool) | gt[k].astype(bool)
        rows, cols = np.flatnonzero(both.any(1)), np.flatnonzero(both.any(0))
        if rows.size == 0:
            continue
        sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        bp, bg = mask_boundary(pred[k][sl], dilation), mask_boundary(gt[k][sl], dilation)
        inter[k], union[k] = np.count_nonzero(bp & bg), np.count_nonzero(bp | bg)
    return inter, union
