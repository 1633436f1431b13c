"""Optimiser, learning-rate schedule and loss scaler of a run.

AdamW with weight decay on conv weights only; the learning rate is stepped per optimiser step:
linear warm-up from ``lr * warmup_start_factor`` over ``warmup_epochs``, then a half cosine down to
``lr * min_lr_ratio`` at the last step of ``train.epochs`` (:func:`lr_factor`). On CUDA with fp16
autocast a :class:`torch.amp.GradScaler` scales the loss; elsewhere the scaler is disabled (a no-op).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from roiseg.training.config import OptimConfig


def lr_factor(step: int, warmup_steps: int, total_steps: int, start_factor: float, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based).

    Linear from ``start_factor`` to 1 over ``warmup_steps``, then a half cosine from 1 down to
    ``min_ratio`` at ``total_steps``; ``min_ratio`` afterwards.
    """
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on conv weights only, none on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, o: OptimConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters (:func:`param_groups`) at the peak learning rate ``o.lr``."""
    return torch.optim.AdamW(param_groups(model, o.weight_decay), lr=o.lr, betas=tuple(o.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig, steps_per_epoch: int,
                    epochs: int) -> tuple[torch.optim.lr_scheduler.LambdaLR, int]:
    """The per-step schedule (:func:`lr_factor`) over ``steps_per_epoch * epochs`` steps, and its warm-up steps."""
    total = steps_per_epoch * epochs
    warmup = min(int(round(o.warmup_epochs * steps_per_epoch)), total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total, o.warmup_start_factor, o.min_lr_ratio))
    return scheduler, warmup


def amp_enabled(device: torch.device, o: OptimConfig) -> bool:
    """Whether autocast is on: only when training runs on CUDA and ``optim.amp`` is set."""
    return device.type == "cuda" and o.amp


def amp_dtype(o: OptimConfig) -> torch.dtype:
    return torch.bfloat16 if o.amp_dtype == "bfloat16" else torch.float16


def build_scaler(device: torch.device, o: OptimConfig) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 autocast on CUDA (bf16 needs no loss scaling)."""
    return torch.amp.GradScaler("cuda", enabled=amp_enabled(device, o) and o.amp_dtype == "float16")


__all__ = ["amp_dtype", "amp_enabled", "build_optimizer", "build_scaler", "build_scheduler", "lr_factor", "param_groups"]
