"""Segmentation loss of the ROI head: weighted (optionally focal) cross-entropy + soft Dice.

Where the loss is computed
    On the head's logits pasted to the **full model-input resolution** (``RoiMaskHead.full_logits``,
    [N, 3, H, W] with ``(H, W)`` = the detector input), against the per-ROI 3-class targets at that
    resolution, and **only on pixels whose centre lies inside the ROI** (``inside`` mask, the
    centre rule of :func:`roiseg.modeling.paste.roi_inside_masks`). Pixels outside a ROI are
    forced to background by the exported model, so they carry no gradient here.

Terms (``p`` = softmax over the 3 classes, ``y`` = target class, ``w`` = class weights, sums over
the inside pixels of all ROIs in the batch)

* cross-entropy: ``CE = sum_i w[y_i] * (1 - p_i[y_i])**gamma * -log p_i[y_i] / sum_i w[y_i]``
  (the weighted mean of ``torch.nn.functional.cross_entropy``; ``gamma = focal_gamma``, 0 = plain CE);
* Dice, per ROI ``n`` and class ``c`` in ``dice_classes``:
  ``D[n, c] = 1 - (2 * sum p[c] * g[c] + s) / (sum p[c] + sum g[c] + s)`` with ``g[c]`` the one-hot
  target and smoothing ``s = 1`` (a ROI with no pixel of class ``c`` scores ~0 when nothing is
  predicted), averaged over ROIs and classes;
* ``total = ce_weight * CE + dice_weight * Dice``.

CE is a pixel mean (large ROIs weigh more, as in the dataset-accumulated mIoU); Dice is a ROI mean
(small ROIs weigh as much as large ones).

A ``query`` head built with ``person_aux`` adds, in the training step, ``person_weight`` times
:func:`person_map_loss`: the binary cross-entropy of its per-image person map against the share of
each stride-4 cell that any person covers (every pixel of the image, not only those inside the ROIs).

Class weights are uniform by default (``loss.class_weights = [1, 1, 1]``); with ``[]`` they come from
``data_analyze.json`` (``class_weights``) when present, else they are computed from the training
targets with the same formula (:func:`compute_class_weights`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from roiseg.conventions import CLASS_NAMES, NUM_CLASSES, TARGET, roi_inside_mask
from roiseg.data.analyze import class_weights as _analyze_class_weights
from roiseg.data.analyze import load_class_weights
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)

DICE_SMOOTH: float = 1.0
"""Additive smoothing of the soft Dice ratio (pixels)."""
DEFAULT_WEIGHT_SAMPLE: int = 256
"""Images of the training set read to compute class weights when there is no ``data_analyze.json``."""


@dataclass
class LossConfig:
    """Weights and options of :class:`SegLoss` (stored in the training config)."""

    ce_weight: float = 1.0
    dice_weight: float = 1.0
    dice_classes: tuple[int, ...] = (TARGET,)
    """Classes whose soft Dice is added: ``(1,)`` = target only, ``(1, 2)`` = also non-target."""
    focal_gamma: float = 0.0
    """Focal exponent on the cross-entropy; 0 = plain (weighted) cross-entropy."""
    class_weights: list[float] | None = field(default_factory=lambda: [1.0, 1.0, 1.0])
    """Cross-entropy weight per class (background, target, non_target); ``None`` = all 1; in the
    training config ``[]`` = from ``data_analyze.json`` (inverse frequency). Uniform by default:
    measured better for short runs (docs/heads.md, "Short runs")."""
    points: int = 12544
    """0: loss on every pixel inside each ROI at the full input resolution (the ROI logits are pasted
    to [N, 3, H, W]); K > 0: loss on K points per ROI, importance-sampled (:mod:`roiseg.training.points`)."""
    oversample: float = 3.0
    """Point loss: uniform candidates drawn per point kept."""
    importance: float = 0.75
    """Point loss: fraction of the points taken where the head is least certain (the rest uniform)."""
    person_weight: float = 1.0
    """Weight of the person-map loss (:func:`person_map_loss`) of a head built with ``head.person_aux``."""

    def validate(self) -> None:
        if self.points < 0 or self.oversample < 1 or not 0 <= self.importance <= 1:
            raise ValueError(f"points must be >= 0, oversample >= 1 and importance in [0, 1] (points={self.points}, "
                             f"oversample={self.oversample}, importance={self.importance})")
        if self.ce_weight < 0 or self.dice_weight < 0 or self.ce_weight + self.dice_weight <= 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0 (ce={self.ce_weight}, dice={self.dice_weight})")
        bad = [c for c in self.dice_classes if not 0 <= int(c) < NUM_CLASSES]
        if bad:
            raise ValueError(f"dice_classes {tuple(self.dice_classes)}: ids must be in 0..{NUM_CLASSES - 1}")
        if self.person_weight < 0:
            raise ValueError(f"person_weight must be >= 0, got {self.person_weight}")
        if self.focal_gamma < 0:
            raise ValueError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        w = self.class_weights
        if w is not None and (len(w) != NUM_CLASSES or not all(np.isfinite(v) and v > 0 for v in w)):
            raise ValueError(f"class_weights must be {NUM_CLASSES} positive numbers {list(CLASS_NAMES)}, got {w}")


class SegLoss(nn.Module):
    """Weighted/focal cross-entropy + soft Dice on the pixels inside each ROI (see module docstring)."""

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        weights = cfg.class_weights if cfg.class_weights is not None else [1.0] * NUM_CLASSES
        self.register_buffer("class_weights", torch.tensor(weights, dtype=torch.float32), persistent=False)

    def forward(self, logits: Tensor, targets: Tensor, inside: Tensor) -> tuple[Tensor, dict[str, float]]:
        """
        Args:
            logits: [N, 3, H, W] logits at full input resolution (any float dtype; computed in float32).
            targets: [N, H, W] class ids (uint8 or int64) at the same resolution.
            inside: [N, 1, H, W] (or [N, H, W]) {0, 1} float: pixel centre inside the ROI.

        Returns:
            ``(total, {"ce": float, "dice": float, "total": float})``; ``total`` is a scalar
            tensor with gradient.
        """
        if logits.dim() != 4 or logits.shape[1] != NUM_CLASSES:
            raise ValueError(f"logits must be [N, {NUM_CLASSES}, H, W], got {tuple(logits.shape)}")
        n, _, h, w = logits.shape
        if tuple(targets.shape) != (n, h, w):
            raise ValueError(f"targets must be [N, H, W] = {(n, h, w)}, got {tuple(targets.shape)}")
        inside = inside.reshape(n, h, w) if inside.dim() == 4 else inside
        if tuple(inside.shape) != (n, h, w):
            raise ValueError(f"inside must be [N, 1, H, W] with N, H, W = {(n, h, w)}, got {tuple(inside.shape)}")

        logits = logits.float()
        tgt = targets.long()
        valid = inside > 0.5  # [N, H, W] bool
        log_p = F.log_softmax(logits, dim=1)  # [N, 3, H, W]
        zero = logits.sum() * 0.0  # keeps the graph when a term is empty or switched off

        ce = self._cross_entropy(log_p, tgt, valid) if self.cfg.ce_weight > 0 else zero
        dice = self._dice(log_p.exp(), tgt, valid) if self.cfg.dice_weight > 0 and self.cfg.dice_classes else zero
        total = self.cfg.ce_weight * ce + self.cfg.dice_weight * dice
        return total, {"ce": float(ce.detach()), "dice": float(dice.detach()), "total": float(total.detach())}

    def _cross_entropy(self, log_p: Tensor, tgt: Tensor, valid: Tensor) -> Tensor:
        """Weighted (focal) CE averaged over inside pixels, normalised by the sum of their weights."""
        log_pt = log_p.gather(1, tgt[:, None]).squeeze(1)[valid]  # [P] log p of the true class
        if log_pt.numel() == 0:
            return log_p.sum() * 0.0
        w = self.class_weights.to(log_p.device)[tgt[valid]]  # [P]
        loss = -log_pt
        if self.cfg.focal_gamma > 0:
            # the floor keeps the gradient finite for gamma < 1 when p_t rounds to 1
            loss = loss * (1.0 - log_pt.exp()).clamp(min=1e-12) ** self.cfg.focal_gamma
        return (w * loss).sum() / w.sum()

    def _dice(self, probs: Tensor, tgt: Tensor, valid: Tensor) -> Tensor:
        """Mean over ROIs and ``dice_classes`` of ``1 - soft Dice`` on the inside pixels."""
        m = valid.to(probs.dtype)  # [N, H, W]
        terms = []
        for c in self.cfg.dice_classes:
            p = probs[:, int(c)] * m
            g = (tgt == int(c)).to(probs.dtype) * m
            inter = (p * g).flatten(1).sum(1)
            denom = p.flatten(1).sum(1) + g.flatten(1).sum(1)
            terms.append(1.0 - (2.0 * inter + DICE_SMOOTH) / (denom + DICE_SMOOTH))  # [N]
        return torch.stack(terms, dim=1).mean()


def person_map_loss(logits: Tensor, person: Tensor) -> Tensor:
    """Binary cross-entropy of the person map, every pixel of the image (YOLACT's semantic loss).

    ``logits`` [B, 1, h, w] at stride ``H / h``; ``person`` [B, H, W] {0, 1} at the input resolution,
    averaged over each cell into the share of the cell a person covers (the soft target).
    """
    b, _, h, w = logits.shape
    if person.dim() != 3 or person.shape[0] != b or person.shape[1] % h or person.shape[2] % w:
        raise ValueError(f"person must be [B, H, W] with B = {b} and H, W multiples of {(h, w)}, "
                         f"got {tuple(person.shape)}")
    share = F.adaptive_avg_pool2d(person[:, None].float(), (h, w))
    return F.binary_cross_entropy_with_logits(logits.float(), share)


# --------------------------------------------------------------------------------------------
# Class weights
# --------------------------------------------------------------------------------------------
def compute_class_weights(pixel_ratios: Mapping[str, float] | Sequence[float]) -> list[float]:
    """Loss weights from pixel ratios, by the formula of ``data_analyze.json``.

    ``pixel_ratios``: ``{"background": r0, "target": r1, "non_target": r2}`` (as in
    ``data_analyze.json``) or a sequence in class order. Median-frequency balancing
    ``w_c = median(r) / r_c``, scaled so that ``sum_c w_c r_c = 1``, clipped to [0.1, 10]
    (:data:`roiseg.data.analyze.CLASS_WEIGHTS_FORMULA`; one implementation for both).
    """
    if isinstance(pixel_ratios, Mapping):
        missing = [n for n in CLASS_NAMES if n not in pixel_ratios]
        if missing:
            raise ValueError(f"pixel_ratios lacks {missing}; expected keys {list(CLASS_NAMES)}")
        ratios = [float(pixel_ratios[n]) for n in CLASS_NAMES]
    else:
        ratios = [float(r) for r in pixel_ratios]
    if len(ratios) != NUM_CLASSES or any(not np.isfinite(r) or r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"pixel_ratios must be {NUM_CLASSES} non-negative numbers, not all 0, got {ratios}")
    return _analyze_class_weights(ratios)


def _sample_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, k)})


def target_pixel_counts(dataset: Any, max_images: int = DEFAULT_WEIGHT_SAMPLE) -> np.ndarray:
    """[3] int64 pixel counts per class inside the ROIs of (a sample of) a training dataset.

    ``dataset[i]`` must give an item with ``rois`` [K, 4] normalised and ``targets`` [K, H, W]
    (a :class:`roiseg.data.dataset.CocoPersonImages`); counts are at the targets' resolution.
    """
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    indices = _sample_indices(len(dataset), max_images)
    for i in progress(indices, desc="class weights", total=len(indices), unit="img"):
        item = dataset[i]
        if not hasattr(item, "targets"):  # a skipped (unreadable) image
            continue
        targets = np.asarray(item.targets)
        rois = np.asarray(item.rois, dtype=np.float32).reshape(-1, 4)
        for roi, target in zip(rois, targets):
            inside = roi_inside_mask(roi, target.shape)
            counts += np.bincount(target[inside], minlength=NUM_CLASSES)[:NUM_CLASSES]
    return counts


def resolve_class_weights(
    analyze_json: str | Path | None, dataset: Any = None, max_images: int = DEFAULT_WEIGHT_SAMPLE
) -> list[float]:
    """Cross-entropy class weights for training.

    1. ``class_weights`` of ``analyze_json`` when that file exists (:class:`InputError` when it is
       malformed);
    2. else computed from the targets of up to ``max_images`` images of ``dataset``;
    3. else (no file, no dataset) all 1.
    """
    weights = load_class_weights(analyze_json)
    if weights is not None:
        LOG.info("class weights from %s: %s", analyze_json, _fmt(weights))
        return weights
    if dataset is None or len(dataset) == 0:
        LOG.info("no analysis file and no dataset: class weights are 1")
        return [1.0] * NUM_CLASSES
    counts = target_pixel_counts(dataset, max_images)
    if counts.sum() == 0:
        LOG.warning("no ROI pixels in the sampled training targets: class weights are 1")
        return [1.0] * NUM_CLASSES
    weights = compute_class_weights(counts / counts.sum())
    LOG.info("class weights computed from %d training images: %s", min(len(dataset), max_images), _fmt(weights))
    return weights


def _fmt(weights: Sequence[float]) -> str:
    return ", ".join(f"{n}={w:.3f}" for n, w in zip(CLASS_NAMES, weights))


__all__ = [
    "LossConfig",
    "SegLoss",
    "compute_class_weights",
    "person_map_loss",
    "resolve_class_weights",
    "target_pixel_counts",
]
