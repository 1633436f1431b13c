"""Whether a trained head fits a detector's features: the one compatibility policy.

Used by ``train --resume`` (a checkpoint against the extractor of the run), ``fuse`` and
``parity-check`` (a checkpoint or head ONNX against the detector file given).

The policy:

* **geometry must match, always**: feature channels, detector input size ``(H, W)`` in pixels and
  stride (pixels per feature cell). A mismatch cannot run, so it is an :class:`InputError`.
* **identity should match**: the feature tensor name and the sha256 of the detector file recorded
  with the head. A mismatch (or nothing recorded) may be legitimate (the same detector re-exported,
  another tensor of the same shape), so it is a warning, or an :class:`InputError` with
  ``strict=True``. Resuming training is always strict: a run must not mix features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

from roiseg.errors import InputError
from roiseg.features.extractor import ExtractorInfo


class HeadGeometry(Protocol):
    """What a head needs from the features (:class:`roiseg.modeling.HeadConfig` has these)."""

    in_channels: int
    stride: int
    input_hw: Sequence[int]
    extra_channels: Sequence[int]
    extra_strides: Sequence[int]


def check_geometry(head: HeadGeometry, info: ExtractorInfo, source: str | Path) -> None:
    """InputError naming ``source`` when the head's channels, input size or stride differ from ``info``."""
    where = f"tensor {info.feature_tensor!r} of {info.path}"
    if int(head.in_channels) != info.channels:
        raise InputError(f"{source}: head expects {head.in_channels} feature channels but {where} has {info.channels}")
    if tuple(int(v) for v in head.input_hw) != tuple(info.input_hw):
        raise InputError(f"{source}: head was built for input {list(head.input_hw)} but {info.path} takes "
                         f"{list(info.input_hw)}")
    if int(head.stride) != info.stride:
        raise InputError(f"{source}: head expects stride {head.stride} but {where} has stride {info.stride}")
    want = [(int(c), int(s)) for c, s in zip(getattr(head, "extra_channels", ()), getattr(head, "extra_strides", ()))]
    have = list(zip(info.extra_channels, info.extra_strides))
    if want and want != have:
        raise InputError(f"{source}: head reads extra taps (channels, stride) {want} but the extra taps "
                         f"{list(info.extra_tensors)} of {info.path} give {have}")


def identity_notes(recorded: Mapping[str, Any] | None, info: ExtractorInfo, source: str | Path) -> list[str]:
    """What differs between the extractor recorded with a head and ``info`` (tensor name, file sha256)."""
    rec = dict(recorded or {})
    rec_tensor = rec.get("feature_tensor") or rec.get("tensor")  # "tensor": checkpoints of roiseg 0.1
    notes = []
    if rec_tensor and rec_tensor != info.feature_tensor:
        notes.append(f"{source} was trained on tensor {rec_tensor!r} but reads {info.feature_tensor!r} now")
    sha = rec.get("sha256")
    if not sha:
        notes.append(f"{source} records no extractor sha256; cannot verify it was trained on {Path(info.path).name}")
    elif sha != info.sha256:
        trained_on = Path(str(rec.get("path", "?"))).name
        notes.append(f"{source} was trained on features of {trained_on} (sha256 {sha[:12]}…) "
                     f"but {info.path} has sha256 {info.sha256[:12]}…")
    return notes


def check_head_features(
    head: HeadGeometry, recorded: Mapping[str, Any] | None, info: ExtractorInfo, source: str | Path,
    strict: bool = False,
) -> list[str]:
    """Apply the policy of the module docstring; returns the warnings (empty when all matches).

    ``head``: the head's geometry; ``recorded``: the extractor info stored with the head
    (:meth:`ExtractorInfo.to_dict`, may be ``None``); ``info``: the detector now; ``source``: the
    checkpoint or head file, named in messages. ``strict`` turns identity warnings into InputError.
    """
    check_geometry(head, info, source)
    notes = identity_notes(recorded, info, source)
    if strict and notes:
        raise InputError(f"{notes[0]} (strict compatibility check)")
    return notes
