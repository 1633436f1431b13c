"""Per-ROI mask metrics on torch tensors: one implementation for training validation and ``evaluate``.

Every function takes a batch of ROIs as ``[N, H, W]`` tensors on one pixel grid (the model input
for :class:`roiseg.training.metrics.SegMetrics`) and returns per-ROI pixel counts; averaging over ROIs
is left to the caller. ``roiseg evaluate`` computes the same figures without torch
(:mod:`roiseg.metrics.numpy_masks`; the tests check that both agree).

* **IoU of a class** for one ROI: ``|P & G| / |P | G|`` where ``P`` are the pixels predicted as
  that class and ``G`` the target pixels of that class (optionally only pixels where ``valid``);
  undefined (NaN) when the union is empty. :func:`per_roi_confusion` counts every
  (target, predicted) class pair per ROI in one histogram pass; :func:`class_intersection_union`
  reads one class's intersection and union from it.
* **Boundary IoU** (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
  Evaluation", CVPR 2021): the IoU of the two masks' *boundaries*, a boundary being the mask minus
  its erosion by ``d`` pixels, ``d = max(1, round(dilation_ratio * image diagonal))`` with
  ``dilation_ratio`` 0.02 by default. As in the reference implementation (``mask_to_boundary`` of
  the boundary-iou-api: zero padding, then ``d`` erosions with a 3x3 kernel) the outside of the
  image counts as background, so mask pixels within ``d`` of the image border are boundary too.
  ``d`` iterated 3x3 erosions equal one erosion by a ``(2d+1) x (2d+1)`` square, done as a
  separable max-pool of the complement, batched over ROIs (on a GPU), or by ``cv2.erode`` with
  that square (CPU tensors, much faster there); :func:`erode` documents both.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from roiseg.conventions import NUM_CLASSES
from roiseg.metrics.numpy_masks import DEFAULT_DILATION_RATIO, boundary_dilation

@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch CPU ops on one thread inside the block (the previous count is restored).

    For loops over small per-ROI crops: there torch's parallel regions cost more than they save,
    and far more on a loaded machine (measured 20x slower with 2 threads on 2 busy cores).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------
# IoU of a class
# --------------------------------------------------------------------------------------------
def check_class_ids(labels: Tensor, name: str, num_classes: int = NUM_CLASSES) -> None:
    """Raise ``ValueError`` naming ``name`` if an integer label tensor holds ids outside ``0..num_classes-1``."""
    if labels.numel() and labels.dtype != torch.bool:
        lo, hi = torch.aminmax(labels)
        if int(lo) < 0 or int(hi) >= num_classes:
            raise ValueError(f"{name} holds class ids outside 0..{num_classes - 1}")


def per_roi_confusion(pred: Tensor, target: Tensor, valid: Tensor | None = None, num_classes: int = NUM_CLASSES) -> Tensor:
    """Pixel counts of every (target class, predicted class) pair, per ROI.

    Args:
        pred: [N, H, W] predicted class ids (any integer dtype), values in ``0..num_classes-1``.
        target: [N, H, W] target class ids, same shape.
        valid: [N, H, W] bool, pixels to count (e.g. pixel centre inside the ROI); ``None`` = all.

    Returns:
        [N, C, C] int64 on the CPU, ``[n, t, p]`` = number of pixels of ROI ``n`` with target
        class ``t`` predicted as ``p``. One ``bincount`` pass (uint8/int32 on the inputs' device).
    """
    if pred.dim() != 3 or tuple(target.shape) != tuple(pred.shape):
        raise ValueError(f"pred and target must both be [N, H, W], got {tuple(pred.shape)} and {tuple(target.shape)}")
    check_class_ids(pred, "pred", num_classes)
    check_class_ids(target, "targets", num_classes)
    n, bins = pred.shape[0], num_classes * num_classes + 1  # last bin: pixels not counted
    pairs = target.to(torch.uint8) * num_classes + pred.to(torch.uint8)
    if valid is not None:
        pairs = torch.where(valid, pairs, torch.tensor(bins - 1, dtype=torch.uint8, device=pairs.device))
    offsets = torch.arange(n, dtype=torch.int32, device=pairs.device) * bins
    pairs = pairs.flatten(1).to(torch.int32) + offsets[:, None]
    hist = torch.bincount(pairs.reshape(-1), minlength=n * bins).reshape(n, bins)[:, :-1]
    return hist.cpu().to(torch.int64).reshape(n, num_classes, num_classes)


def class_intersection_union(confusion: Tensor, cls: int) -> tuple[Tensor, Tensor]:
    """([N] ``|P & G|``, [N] ``|P | G|``) of class ``cls`` from a [N, C, C] :func:`per_roi_confusion`."""
    inter = confusion[:, cls, cls]
    union = confusion[:, cls, :].sum(1) + confusion[:, :, cls].sum(1) - inter
    return inter, union


def intersection_union(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
    """([N] int64 ``|P & G|``, [N] int64 ``|P | G|``) of two [N, H, W] bool masks, on the CPU."""
    if pred.dim() != 3 or tuple(gt.shape) != tuple(pred.shape):
        raise ValueError(f"masks must both be [N, H, W], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    pred, gt = pred.bool(), gt.bool()
    inter = (pred & gt).flatten(1).sum(1)
    union = (pred | gt).flatten(1).sum(1)
    return inter.cpu(), union.cpu()


def iou(inter: Tensor, union: Tensor) -> Tensor:
    """[N] float64 ``inter / union``; NaN where ``union == 0`` (undefined: callers skip those ROIs)."""
    inter, union = inter.double(), union.double()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.full_like(union, math.nan))


# --------------------------------------------------------------------------------------------
# Boundary IoU
# --------------------------------------------------------------------------------------------
def erode(masks: Tensor, dilation: int, backend: str | None = None) -> Tensor:
    """[N, H, W] bool -> [N, H, W] bool erosion by a ``(2d+1) x (2d+1)`` square, outside = background.

    A pixel stays set when every pixel within Chebyshev distance ``d`` is set *and* inside the
    grid (equal to ``d`` iterations of ``cv2.erode`` with a 3x3 kernel after one pixel of zero
    padding, as the reference). ``backend``: ``"pool"`` = separable max-pool of the complement
    padded with 1, batched, on the masks' device; ``"opencv"`` = ``cv2.erode`` per mask with the
    same square and a zero border (CPU tensors only; tens of times faster there). ``None``:
    OpenCV for CPU tensors, max-pool otherwise. Both give identical masks.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
    d = int(dilation)
    if d < 1:
        raise ValueError(f"dilation must be >= 1 pixel, got {dilation}")
    backend = backend or ("opencv" if masks.device.type == "cpu" else "pool")
    if masks.numel() == 0:
        return torch.zeros_like(masks, dtype=torch.bool)
    if backend == "opencv":
        arr = masks.detach().cpu().numpy().astype(np.uint8)
        kernel = np.ones((2 * d + 1, 2 * d + 1), dtype=np.uint8)
        out = np.stack([cv2.erode(m, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0) for m in arr])
        return torch.from_numpy(out.astype(bool)).to(masks.device)
    if backend != "pool":
        raise ValueError(f"unknown erosion backend {backend!r}; expected 'pool' or 'opencv'")
    outside = (~masks.bool()).to(torch.float32)[:, None]  # [N, 1, H, W]
    outside = F.pad(outside, (d, d, d, d), value=1.0)
    outside = F.max_pool2d(outside, kernel_size=(1, 2 * d + 1), stride=1)
    outside = F.max_pool2d(outside, kernel_size=(2 * d + 1, 1), stride=1)
    return outside[:, 0] < 0.5


def mask_boundary(masks: Tensor, dilation: int, backend: str | None = None) -> Tensor:
    """[N, H, W] bool boundary: mask pixels within ``dilation`` pixels of background or the border
    (``mask & ~erode(mask)``; ``backend`` as :func:`erode`)."""
    masks = masks.bool()
    return masks & ~erode(masks, dilation, backend)


def _support_box(mask: Tensor) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` half-open bounding box of a [H, W] bool mask; ``None`` when empty."""
    rows = torch.nonzero(mask.any(1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(mask.any(0)).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def boundary_intersection_union(
    pred: Tensor, gt: Tensor, dilation: int, crop: bool | None = None, backend: str | None = None
) -> tuple[Tensor, Tensor]:
    """Per-ROI Boundary IoU counts of two [N, H, W] bool masks.

    Returns ([N] int64 ``|Bp & Bg|``, [N] int64 ``|Bp | Bg|``) on the CPU, where ``B = mask_boundary(
    mask, dilation)``; :func:`iou` of them is the Boundary IoU (Cheng et al. "G_d ∩ G" form).

    ``crop``: compute each ROI on the bounding box of ``pred | gt`` (zero padding there is exact:
    both masks are empty outside it, and the image border pads with zeros too), which is much
    cheaper on the CPU for small ROIs; ``False`` runs the whole batch at once (fast on a GPU).
    ``None``: crop on the CPU, batch elsewhere. Both give identical counts. ``backend``: the
    erosion's (:func:`erode`).
    """
    if pred.dim() != 3 or tuple(gt.shape) != tuple(pred.shape):
        raise ValueError(f"masks must both be [N, H, W], got {tuple(pred.shape)} and {tuple(gt.shape)}")
    pred, gt = pred.bool(), gt.bool()
    if crop is None:
        crop = pred.device.type == "cpu"
    if not crop:
        return intersection_union(mask_boundary(pred, dilation, backend), mask_boundary(gt, dilation, backend))
    inter = torch.zeros(pred.shape[0], dtype=torch.int64)
    union = torch.zeros(pred.shape[0], dtype=torch.int64)
    with single_threaded() if pred.device.type == "cpu" else contextlib.nullcontext():
        for k in range(pred.shape[0]):
            box = _support_box(pred[k] | gt[k])
            if box is None:
                continue
            y0, y1, x0, x1 = box
            pair = torch.stack([pred[k, y0:y1, x0:x1], gt[k, y0:y1, x0:x1]])
            bp, bg = mask_boundary(pair, dilation, backend)
            inter[k] = int((bp & bg).sum())
            union[k] = int((bp | bg).sum())
    return inter, union


__all__ = [
    "DEFAULT_DILATION_RATIO",
    "boundary_dilation",
    "boundary_intersection_union",
    "check_class_ids",
    "class_intersection_union",
    "erode",
    "intersection_union",
    "iou",
    "mask_boundary",
    "per_roi_confusion",
    "single_threaded",
]
