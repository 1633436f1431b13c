"""The state of a run: seeding and RNG states, what a checkpoint of an epoch holds, resuming from one.

Determinism (so that 2 epochs == 1 epoch + resume + 1 epoch): the image order of epoch ``e``
comes from ``torch.Generator().manual_seed(seed + e)``, the ROI jitter from
``dataset.set_epoch(e)``, the ROI sample of a step from ``(seed, e, step, rank)``; model,
optimizer, scheduler, scaler and RNG states are stored in each checkpoint and restored from it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from roiseg.errors import InputError
from roiseg.features.compat import check_head_features
from roiseg.features.extractor import ExtractorInfo
from roiseg.modeling import HeadConfig, MaskHead
from roiseg.training.checkpoint import load_checkpoint, resolve_resume
from roiseg.training.config import TrainConfig, load_config
from roiseg.training.step import StepSetup

TRAINING_STATE_KEYS = ("optimizer", "scheduler", "rng")
GEOMETRY_KEYS = ("in_channels", "stride", "input_hw")
"""Head-config fields :func:`roiseg.features.compat.check_head_features` compares with the extractor."""
"""What a checkpoint needs beyond the head to be resumed (export needs only the head)."""


# --------------------------------------------------------------------------------------------
# Seeds and RNG states
# --------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states (stored in checkpoints)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (CUDA states are restored when as many devices are visible)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# --------------------------------------------------------------------------------------------
# Checkpoint contents
# --------------------------------------------------------------------------------------------
def checkpoint_state(epoch: int, head: MaskHead, extractor: ExtractorInfo, config: TrainConfig, step: StepSetup,
                     record: dict[str, Any], best: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint of ``epoch`` holds (see :mod:`roiseg.training.checkpoint`)."""
    return {
        "epoch": epoch,
        "head_config": head.cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "extractor": extractor.to_dict(),
        "metrics": record,
        "config": config.to_dict(),
        "optimizer": step.optimizer.state_dict(),
        "scheduler": step.scheduler.state_dict() if step.scheduler is not None else {},
        "scaler": step.scaler.state_dict() if step.scaler.is_enabled() else {},
        "rng": rng_state(),
        "best": dict(best),
    }


def restore_training_state(state: dict[str, Any], step: StepSetup, source: str | Path) -> tuple[int, dict | None]:
    """Optimizer, scheduler, scaler and RNG states from a checkpoint; returns ``(epoch done, best record)``."""
    for key in TRAINING_STATE_KEYS:
        if key not in state:
            raise InputError(f"checkpoint {source} has no {key} state; it cannot be resumed (only exported)")
    try:
        step.optimizer.load_state_dict(state["optimizer"])
        if step.scheduler is not None:
            step.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise InputError(f"checkpoint {source}: optimizer/scheduler state does not fit this head: {exc}") from exc
    if state.get("scaler"):
        step.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["epoch"]), state.get("best")


# --------------------------------------------------------------------------------------------
# Resuming
# --------------------------------------------------------------------------------------------
class _RecordedGeometry:
    """The feature geometry a checkpoint's head was built for (head config, else the recorded extractor)."""

    def __init__(self, state: Mapping[str, Any], source: str) -> None:
        head, ext = state.get("head_config") or {}, state.get("extractor") or {}
        values = {"in_channels": head.get("in_channels", ext.get("channels")), "stride": head.get("stride", ext.get("stride")),
                  "input_hw": head.get("input_hw", ext.get("input_hw"))}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise InputError(f"{source} records no {', '.join(missing)} of the features it was trained on")
        self.in_channels, self.stride, self.input_hw = values["in_channels"], values["stride"], values["input_hw"]


def _default_head_dict() -> dict[str, Any]:
    """:meth:`HeadConfig.to_dict` of the defaults (geometry fields zero)."""
    return HeadConfig(in_channels=0, stride=0, input_hw=(0, 0)).to_dict()


def check_resumable(state: Mapping[str, Any], head_cfg: HeadConfig, info: ExtractorInfo, source: str | Path) -> None:
    """InputError naming the checkpoint when a run with ``head_cfg`` on ``info`` cannot continue it.

    The features (channels, input size, stride, tensor, extractor file) must be the same
    (:func:`roiseg.features.compat.check_head_features`, strict), and so must the configured head.
    """
    where = f"checkpoint {source}"
    check_head_features(_RecordedGeometry(state, where), state.get("extractor"), info, where, strict=True)
    saved = {**_default_head_dict(), **HeadConfig.LEGACY, **(state.get("head_config") or {})}  # added since: as before
    diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in head_cfg.to_dict().items()
            if k not in GEOMETRY_KEYS and saved.get(k) != v]
    if diff:
        raise InputError(f"{where}: head differs from the configured one ({'; '.join(diff)})")


def resolve_run_config(
    toml_path: str | Path | None,
    overrides: Mapping[str, Any] | None,
    resume: str | Path | None,
) -> tuple[TrainConfig, Path | None]:
    """The config of a run and the checkpoint it resumes from (``None`` for a fresh run).

    ``resume``: ``None`` (fresh), ``""`` (latest checkpoint in ``train.out``), a folder (latest in
    it) or a file. A resumed run starts from the checkpoint's stored config, with ``train.out``
    set to the checkpoint's folder and ``train.stop_after`` cleared; the TOML file and the
    overrides given now are applied on top (e.g. more ``train.epochs``).
    """
    cfg = load_config(toml_path, overrides)
    if resume is None:
        return cfg, None
    path = resolve_resume(resume, cfg.train.out)
    state = load_checkpoint(path)
    base = TrainConfig().to_dict() if not isinstance(state.get("config"), dict) else json.loads(json.dumps(state["config"]))
    base.setdefault("train", {}).update({"out": str(path.parent), "stop_after": 0})
    recorded = state.get("head_config") or {}
    for key, value in HeadConfig.LEGACY.items():  # a head field the checkpoint predates: how its head was built
        if key not in recorded:
            base.setdefault("head", {})[key] = value
    cfg = load_config(toml_path, overrides, base=base)
    return cfg, path


__all__ = [
    "check_resumable", "checkpoint_state", "resolve_run_config", "restore_training_state", "rng_state",
    "seed_everything", "set_rng_state",
]
