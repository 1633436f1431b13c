"""Validation metrics of the ROI head, accumulated over a dataset (and over DDP ranks).

All metrics are computed at the **full model-input resolution** on hard predictions
(``argmax`` of :meth:`RoiMaskHead.predict_masks`, [N, H, W]) against the per-ROI 3-class targets.
When ``inside`` masks are given (the usual case) only pixels whose centre lies inside the ROI
count; outside them the model predicts background by construction and the target is background,
so this changes only the background IoU (which would otherwise be dominated by the image area
outside the ROIs), never the target / non-target IoUs.

Definitions (``P`` = predicted pixels of a class, ``G`` = target pixels of that class):

* ``iou_<class>`` = ``sum |P & G| / sum |P | G|``, both sums accumulated over all ROIs of the
  dataset before dividing; ``None`` when the union is empty.
* ``miou`` = mean of ``iou_target`` and ``iou_non_target`` (the defined ones; ``None`` if neither is).
* ``mean_roi_target_iou`` = mean over ROIs of the target IoU of that ROI alone; a ROI whose union is
  empty (no target pixel, none predicted) is skipped. ``roi_target_iou_{small,medium,large}``: the
  same mean within each COCO size bucket of the annotation area (original pixels,
  :func:`roiseg.conventions.size_bucket`); ``None`` for an empty bucket.
* ``box_baseline_roi_target_iou`` = ``mean_roi_target_iou`` of the trivial prediction "every pixel
  inside the ROI is target" (needs ``inside``; ``None`` without it). A head must beat it clearly.
* ``mean_roi_target_boundary_iou`` = mean over ROIs of the Boundary IoU (Cheng et al. 2021) of the
  ROI's predicted and target target masks (both restricted to the inside pixels when ``inside`` is
  given), boundary width ``max(1, round(dilation_ratio * diagonal))`` of the ``(H, W)`` grid;
  ROIs whose two boundaries are both empty are skipped (:mod:`roiseg.metrics.masks`).
* ``num_rois`` = ROIs seen.

The per-ROI counts come from :mod:`roiseg.metrics.masks`, the implementation ``roiseg evaluate``
uses at original resolution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from roiseg.conventions import BACKGROUND, NON_TARGET, NUM_CLASSES, SIZE_BUCKETS, TARGET, size_bucket
from roiseg.metrics.masks import (
    DEFAULT_DILATION_RATIO,
    boundary_dilation,
    boundary_intersection_union,
    class_intersection_union,
    iou,
    per_roi_confusion,
)

ROI_CHUNK: int = 32
"""ROIs processed at a time in :meth:`SegMetrics.update` (bounds temporary memory at full resolution)."""

# Layout of the 1-D state tensor (all entries are sums, so states add up across ranks).
_CM = slice(0, NUM_CLASSES * NUM_CLASSES)  # confusion matrix, row = target class, column = predicted
_ROI = NUM_CLASSES * NUM_CLASSES  # (sum of per-ROI target IoU, number of scored ROIs)
_BUCKET = {b: _ROI + 2 + 2 * i for i, b in enumerate(SIZE_BUCKETS)}  # (sum, count) per size bucket
_BOX = _ROI + 2 + 2 * len(SIZE_BUCKETS)  # (sum, count) of the box baseline
_NUM_ROIS = _BOX + 2
_BOUNDARY = _NUM_ROIS + 1  # (sum of per-ROI target boundary IoU, number of scored ROIs)
STATE_SIZE: int = _BOUNDARY + 2


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


class SegMetrics:
    """Accumulates the validation metrics (module docstring) over batches of ROIs.

    Distributed use: every rank calls :meth:`update` on its shard, then
    ``t = m.state().to(device); dist.all_reduce(t); m.load_state(t)`` and :meth:`compute`.
    """

    def __init__(self, dilation_ratio: float = DEFAULT_DILATION_RATIO) -> None:
        self.dilation_ratio = float(dilation_ratio)
        self._state = torch.zeros(STATE_SIZE, dtype=torch.float64)

    def reset(self) -> None:
        self._state.zero_()

    @torch.no_grad()
    def update(self, pred: Tensor, targets: Tensor, areas: Tensor, inside: Tensor | None = None) -> None:
        """Add a batch of ROIs.

        Args:
            pred: [N, H, W] predicted class ids (int).
            targets: [N, H, W] target class ids (uint8 / int64), same resolution.
            areas: [N] COCO annotation areas in original pixels (for the size buckets).
            inside: [N, H, W] bool (or [N, 1, H, W] {0, 1}) pixel centre inside the ROI; ``None``
                counts every pixel and leaves the box baseline undefined.
        """
        if pred.dim() != 3 or tuple(targets.shape) != tuple(pred.shape):
            raise ValueError(f"pred and targets must both be [N, H, W], got {tuple(pred.shape)} and {tuple(targets.shape)}")
        n = pred.shape[0]
        areas = torch.as_tensor(areas).reshape(-1)
        if areas.numel() != n:
            raise ValueError(f"areas must have one entry per ROI ({n}), got {areas.numel()}")
        if inside is not None:
            inside = inside.reshape(pred.shape) if inside.dim() == 4 else inside
            if tuple(inside.shape) != tuple(pred.shape):
                raise ValueError(f"inside must be [N, H, W] = {tuple(pred.shape)}, got {tuple(inside.shape)}")
        buckets = [size_bucket(float(a)) for a in areas.tolist()]
        for start in range(0, n, ROI_CHUNK):
            sl = slice(start, start + ROI_CHUNK)
            valid = None if inside is None else inside[sl] if inside.dtype == torch.bool else inside[sl] > 0.5
            self._update_chunk(pred[sl], targets[sl], valid, buckets[sl])
        self._state[_NUM_ROIS] += n

    def _update_chunk(self, pred: Tensor, tgt: Tensor, valid: Tensor | None, buckets: list[str]) -> None:
        """One histogram pass (per ROI, the pixel counts of each (target, predicted) pair) + boundaries."""
        hist = per_roi_confusion(pred, tgt, valid).double()  # [n, target, pred]
        s = self._state
        s[_CM] += hist.sum(0).reshape(-1)
        inter, union = class_intersection_union(hist, TARGET)
        roi_iou = iou(inter, union)
        scored = ~roi_iou.isnan()
        roi_iou = roi_iou.nan_to_num(0.0)
        s[_ROI] += roi_iou.sum()
        s[_ROI + 1] += scored.sum()
        for k, b in enumerate(buckets):
            if scored[k]:
                s[_BUCKET[b]] += roi_iou[k]
                s[_BUCKET[b] + 1] += 1
        if valid is not None:  # box baseline: prediction = every inside pixel is target
            box_iou = iou(hist[:, TARGET, :].sum(1), hist.sum((1, 2)))  # target pixels / inside pixels
            s[_BOX] += box_iou.nan_to_num(0.0).sum()
            s[_BOX + 1] += (~box_iou.isnan()).sum()
        pred_t, tgt_t = pred == TARGET, tgt == TARGET
        if valid is not None:
            pred_t, tgt_t = pred_t & valid, tgt_t & valid
        d = boundary_dilation(tuple(pred.shape[1:]), self.dilation_ratio)
        b_iou = iou(*boundary_intersection_union(pred_t, tgt_t, d))
        s[_BOUNDARY] += b_iou.nan_to_num(0.0).sum()
        s[_BOUNDARY + 1] += (~b_iou.isnan()).sum()

    def state(self) -> Tensor:
        """1-D float64 tensor of sums; summing the states of several instances merges them."""
        return self._state.clone()

    def load_state(self, t: Tensor) -> None:
        """Replace the accumulated sums (e.g. by the ``all_reduce``-d state of all ranks)."""
        t = torch.as_tensor(t).detach().reshape(-1)
        if t.numel() != STATE_SIZE:
            raise ValueError(f"metrics state must have {STATE_SIZE} entries, got {t.numel()}")
        self._state = t.to(device="cpu", dtype=torch.float64).clone()

    def class_iou(self) -> list[float | None]:
        """Dataset-accumulated IoU per class (background, target, non_target); ``None`` if undefined."""
        cm = self._state[_CM].reshape(NUM_CLASSES, NUM_CLASSES)
        inter = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - inter
        return [_ratio(float(i), float(u)) for i, u in zip(inter, union)]

    def compute(self) -> dict:
        """The metrics of everything accumulated so far (module docstring); plain Python values."""
        s = self._state
        ious = self.class_iou()
        fg = [v for v in (ious[TARGET], ious[NON_TARGET]) if v is not None]
        out: dict = {
            "miou": sum(fg) / len(fg) if fg else None,
            "iou_background": ious[BACKGROUND],
            "iou_target": ious[TARGET],
            "iou_non_target": ious[NON_TARGET],
            "mean_roi_target_iou": _ratio(float(s[_ROI]), float(s[_ROI + 1])),
        }
        for b in SIZE_BUCKETS:
            out[f"roi_target_iou_{b}"] = _ratio(float(s[_BUCKET[b]]), float(s[_BUCKET[b] + 1]))
        out["box_baseline_roi_target_iou"] = _ratio(float(s[_BOX]), float(s[_BOX + 1]))
        out["mean_roi_target_boundary_iou"] = _ratio(float(s[_BOUNDARY]), float(s[_BOUNDARY + 1]))
        out["num_rois"] = int(s[_NUM_ROIS])
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in out.items()}


__all__ = ["SegMetrics", "STATE_SIZE"]
