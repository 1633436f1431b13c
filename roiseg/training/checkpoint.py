"""Checkpoint files: what they hold, how they are written (atomically) and read (validated).

A checkpoint is a ``torch.save`` dict:

========================  ================================================================
``format``                ``"roiseg-checkpoint-v1"``
``roiseg_version``        version that wrote it
``epoch``                 last finished epoch (1-based)
``head_config``           :meth:`roiseg.modeling.HeadConfig.to_dict`
``model``                 head ``state_dict`` (no DDP ``module.`` prefix)
``extractor``             :meth:`roiseg.features.extractor.ExtractorInfo.to_dict`: path, sha256,
                          feature_tensor, input size, stride, channels, preprocessing
``metrics``               validation metrics of that epoch (``miou`` etc.)
``config``                the full training config (dict)
``optimizer``,            training state for resuming (optional for export-only use)
``scheduler``, ``scaler``,
``rng``
``best``                  ``{"epoch", "miou", "file"}`` of the best epoch so far (written by training)
========================  ================================================================

Run folders (:func:`find_checkpoints`, :func:`find_latest`, :func:`resolve_resume`,
:func:`prune_checkpoints`, :func:`record_best`) are below. Whether a checkpoint fits the current
extractor: :func:`roiseg.features.compat.check_head_features`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from roiseg import __version__
from roiseg.conventions import BEST_CHECKPOINT, CHECKPOINT_GLOB, CHECKPOINT_PATTERN
from roiseg.errors import InputError
from roiseg.modeling import HeadConfig, MaskHead, build_head
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


def head_from_state(state: dict[str, Any], source: str | Path = "checkpoint") -> MaskHead:
    """Build the head described by a checkpoint dict and load its weights (eval mode)."""
    try:
        cfg = HeadConfig.from_dict(state["head_config"])
        head = build_head(cfg)
        head.load_state_dict(state["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"checkpoint {source}: head_config/model do not match: {str(exc).splitlines()[0][:200]}") from exc
    return head.eval()


def load_head(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[MaskHead, dict[str, Any]]:
    """``(head in eval mode, checkpoint dict)`` from a checkpoint file."""
    state = load_checkpoint(path, map_location)
    return head_from_state(state, path), state


# --------------------------------------------------------------------------------------------
# Run folders: finding, pruning, the best checkpoint
# --------------------------------------------------------------------------------------------
def _name_regex() -> re.Pattern[str]:
    """:data:`roiseg.conventions.CHECKPOINT_PATTERN` as a regex capturing ``epoch``, ``height``, ``width``, ``miou``."""
    parts = re.split(r"\{(\w+)(?::[^}]*)?\}", CHECKPOINT_PATTERN)
    regex = "".join(re.escape(p) if i % 2 == 0 else rf"(?P<{p}>\d+)" for i, p in enumerate(parts))
    return re.compile(rf"^{regex}$")


_CHECKPOINT_RE = _name_regex()


def checkpoint_epoch(path: str | Path) -> int | None:
    """Epoch encoded in a checkpoint file name (``checkpoint_epoch_0007_...`` -> 7), else ``None``."""
    m = _CHECKPOINT_RE.match(Path(path).name)
    return int(m.group("epoch")) if m else None


def find_checkpoints(folder: str | Path) -> list[Path]:
    """Epoch checkpoints in ``folder`` sorted by epoch (oldest first); temp files and ``best.pth`` excluded."""
    found = [p for p in Path(folder).glob(CHECKPOINT_GLOB) if p.is_file() and checkpoint_epoch(p) is not None]
    return sorted(found, key=lambda p: (checkpoint_epoch(p), p.stat().st_mtime_ns))


def find_latest(folder: str | Path) -> Path | None:
    """The checkpoint of the highest epoch in ``folder``, or ``None`` when there is none."""
    found = find_checkpoints(folder)
    return found[-1] if found else None


def resolve_resume(target: str | Path, default_folder: str | Path) -> Path:
    """The checkpoint a resume means: a file as given, or the latest in a folder.

    ``target`` ``""`` means ``default_folder`` (the run's output folder). InputError naming the
    folder when it holds no checkpoint.
    """
    p = Path(target) if str(target) else Path(default_folder)
    if p.is_dir():
        latest = find_latest(p)
        if latest is None:
            raise InputError(f"resume: no {CHECKPOINT_GLOB} in {p}")
        return latest
    if not p.is_file():
        raise InputError(f"resume: checkpoint not found: {p}")
    return p


def prune_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` epoch checkpoints (``keep <= 0``: delete none); return the deleted.

    ``best.pth`` is a separate file (:func:`record_best`), so the best epoch survives pruning.
    """
    if keep <= 0:
        return []
    old = find_checkpoints(folder)[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return old


def record_best(checkpoint: str | Path, folder: str | Path | None = None) -> Path:
    """Make ``<folder>/best.pth`` (default: the checkpoint's folder) a copy of ``checkpoint``.

    A hard link where the file system allows it (no extra disk), else a byte copy; either way the
    new file is built under a temporary name and renamed over the old one.
    """
    src = Path(checkpoint)
    dst = Path(folder if folder is not None else src.parent) / BEST_CHECKPOINT
    with atomic_path(dst) as tmp:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
    return dst
