"""Checkpoint files: what they hold, how they are written (atomically) and read (validated).

A checkpoint is a ``torch.save`` dict:

========================  ================================================================
``format``                ``"roiseg-checkpoint-v1"``
``roiseg_version``        version that wrote it
``epoch``                 last finished epoch (1-based)
``head_config``           :meth:`roiseg.modeling.HeadConfig.to_dict`
``model``                 head ``state_dict`` (no DDP ``module.`` prefix)
``extractor``             :meth:`roiseg.features.extractor.ExtractorInfo.to_dict`: path, sha256, tensor,
                          input size, stride, channels, preprocessing
``metrics``               validation metrics of that epoch (``miou`` etc.)
``config``                the full training config (dict)
``optimizer``,            training state for ``--resume`` (optional for export-only use)
``scheduler``, ``scaler``,
``rng``
========================  ================================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from roiseg import __version__
from roiseg.errors import InputError
from roiseg.modeling import HeadConfig, RoiMaskHead, build_head
from roiseg.utils.atomic import atomic_path

CHECKPOINT_FORMAT = "roiseg-checkpoint-v1"
REQUIRED_KEYS = ("format", "epoch", "head_config", "model", "extractor")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (``format`` and ``roiseg_version`` are filled in) atomically to ``path``."""
    state = {"format": CHECKPOINT_FORMAT, "roiseg_version": __version__, **state}
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; raise :class:`InputError` naming the file when it is unusable."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, pickle garbage, not a torch file...
        raise InputError(f"corrupt or unreadable checkpoint {p}: {type(exc).__name__}: {str(exc)[:160]}") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"not a roiseg checkpoint: {p} (missing format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise InputError(f"checkpoint {p} lacks field(s) {', '.join(missing)}")
    return state


def head_from_state(state: dict[str, Any], source: str | Path = "checkpoint") -> RoiMaskHead:
    """Build the head described by a checkpoint dict and load its weights (eval mode)."""
    try:
        cfg = HeadConfig.from_dict(state["head_config"])
        head = build_head(cfg)
        head.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"checkpoint {source}: head_config/model do not match: {str(exc).splitlines()[0][:200]}") from exc
    return head.eval()


def load_head(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[RoiMaskHead, dict[str, Any]]:
    """``(head in eval mode, checkpoint dict)`` from a checkpoint file."""
    state = load_checkpoint(path, map_location)
    return head_from_state(state, path), state
