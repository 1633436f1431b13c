"""One optimisation step of the head, shared by the trainer and the training benchmark.

A step takes a batch's features, images, ROIs and targets on the training device, keeps at most
``max_rois`` of the ROIs (a deterministic sample, :func:`sample_rois`, seeded per step with
:func:`step_seed`), runs the head, and computes the loss either on K importance-sampled points per
ROI (``loss.points``, :mod:`roiseg.training.points`) or, with ``points = 0``, on every pixel inside
each ROI after pasting the ROI-grid logits to the full input resolution; back-propagates through the GradScaler (a no-op
unless fp16 autocast runs on CUDA), clips the global gradient norm, and steps the optimiser and
the per-step learning-rate schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from roiseg.modeling.paste import paste_roi_logits, roi_inside_masks
from roiseg.training.loss import person_map_loss
from roiseg.training.points import point_batch


def neighbour_context(model: nn.Module, rois: torch.Tensor, batch_idx: torch.Tensor) -> torch.Tensor | None:
    """The head's neighbour map of every ROI of a batch (``None`` for a head without one), taken before the
    step keeps a sample of them, so that a kept ROI still sees the neighbours left out."""
    head = getattr(model, "module", model)  # DistributedDataParallel wraps the head
    context = getattr(head, "neighbour_context", None)
    with torch.no_grad():
        return None if context is None else context(rois, batch_idx)


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (``np.random.SeedSequence``), for per-step generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sample_rois(n: int, cap: int, seed: int) -> torch.Tensor | None:
    """Sorted indices of ``cap`` of ``n`` ROIs drawn with ``seed``; ``None`` when ``n <= cap`` (keep all)."""
    if n <= cap:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:cap].sort().values


@dataclass
class StepSetup:
    """What a step needs: the model (the head or its DDP wrapper), loss, optimiser, schedule, scaler, limits."""

    model: nn.Module
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    scaler: torch.amp.GradScaler
    input_hw: tuple[int, int]
    grad_clip: float = 0.0
    """Max global gradient norm (0 = no clipping)."""
    max_rois: int = 0
    """Cap on the ROIs of a step (0 = no cap)."""
    points: int = 0
    """Point-sampled loss: K points per ROI (0 = loss on all pixels at full resolution)."""
    oversample: float = 3.0
    importance: float = 0.75
    person_weight: float = 0.0
    """Weight of the person-map loss (0 = off; > 0 only for a head built with ``person_aux``)."""
    device_type: str = "cpu"
    amp: bool = False
    amp_dtype: torch.dtype = torch.float16

    def autocast(self) -> torch.autocast:
        """Mixed precision for the forward pass and the loss (disabled unless ``amp``)."""
        return torch.autocast(device_type=self.device_type, dtype=self.amp_dtype, enabled=self.amp)


def _sample(setup: StepSetup, rois: torch.Tensor, batch_idx: torch.Tensor, targets: torch.Tensor,
            seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, object]]:
    """At most ``setup.max_rois`` of the ROIs (:func:`sample_rois`) and the head's keywords for them: the
    neighbour map of the whole batch when a sample is kept (:func:`neighbour_context`)."""
    pick = sample_rois(len(rois), setup.max_rois, seed) if setup.max_rois > 0 else None
    if pick is None:
        return rois, batch_idx, targets, {}
    pick = pick.to(rois.device)
    context = neighbour_context(setup.model, rois, batch_idx)
    extra: dict[str, object] = {} if context is None else {"neighbours": context[pick]}
    return rois[pick], batch_idx[pick], targets[pick], extra


def _roi_loss(setup: StepSetup, roi_logits: torch.Tensor, rois: torch.Tensor, targets: torch.Tensor,
              seed: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The ROI loss: on K importance-sampled points per ROI (``setup.points``; no [N, 3, H, W] tensor) or on
    every inside pixel of the pasted logits."""
    if setup.points > 0:
        gen = torch.Generator().manual_seed(seed)
        logits, tgt, valid = point_batch(roi_logits, rois, targets, setup.input_hw, setup.points,
                                         setup.oversample, setup.importance, gen)
        return setup.loss_fn(logits, tgt, valid)
    logits = paste_roi_logits(roi_logits, rois, setup.input_hw)
    return setup.loss_fn(logits, targets, roi_inside_masks(rois, setup.input_hw))


def _optimise(setup: StepSetup, loss: torch.Tensor) -> None:
    """Backward through the scaler, clip the global gradient norm, step the optimiser and the schedule."""
    setup.optimizer.zero_grad(set_to_none=True)
    setup.scaler.scale(loss).backward()
    if setup.grad_clip > 0:
        setup.scaler.unscale_(setup.optimizer)
        torch.nn.utils.clip_grad_norm_(setup.model.parameters(), setup.grad_clip)
    setup.scaler.step(setup.optimizer)
    setup.scaler.update()
    if setup.scheduler is not None:
        setup.scheduler.step()


def train_step(
    setup: StepSetup,
    feats: torch.Tensor | list[torch.Tensor],
    images: torch.Tensor,
    rois: torch.Tensor,
    batch_idx: torch.Tensor,
    targets: torch.Tensor,
    seed: int = 0,
    person: torch.Tensor | None = None,
) -> tuple[dict[str, float], int]:
    """One optimisation step; returns the loss parts (``total``, ``ce``, ``dice``[, ``person``]) and the ROIs trained on.

    ``feats`` [B, C, h, w], ``images`` [B, 3, H, W], ``rois`` [K, 4] normalised xyxy, ``batch_idx``
    [K], ``targets`` [K, H, W], ``person`` [B, H, W] {0, 1} (any person; used when ``setup.person_weight > 0``),
    all on the training device; ``seed`` draws the ROI sample when ``K > setup.max_rois`` and the points of a
    point-sampled loss. ``feats`` may be every tap (primary first).
    """
    rois, batch_idx, targets, extra = _sample(setup, rois, batch_idx, targets, seed)
    with_person = setup.person_weight > 0 and person is not None
    if with_person:
        extra["with_person"] = True
    with setup.autocast():
        roi_logits = setup.model(feats, rois, batch_idx, images, **extra)
        if with_person:
            roi_logits, person_logits = roi_logits
        loss, parts = _roi_loss(setup, roi_logits, rois, targets, seed)
        if with_person:
            aux = person_map_loss(person_logits, person)
            loss = loss + setup.person_weight * aux
            parts = {**parts, "person": float(aux.detach()), "total": float(loss.detach())}
    _optimise(setup, loss)
    return parts, len(rois)


__all__ = ["StepSetup", "sample_rois", "step_seed", "train_step"]
