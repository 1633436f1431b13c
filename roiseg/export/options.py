"""What ``roiseg fuse`` is asked for, typed: :class:`FuseOptions` (every model) and :class:`InstanceOptions`
(``--instances``: how the detector's detections are read and kept)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

from roiseg.conventions import DEFAULT_OUTPUTS, ImageInput, Preprocessing
from roiseg.detection.formats import InstanceParams


@dataclass(frozen=True)
class FuseOptions:
    """How the fused model is built and finished (the flags of ``roiseg fuse``)."""

    feature_tensor: str | None = None
    """Tensor the head reads (default: the one recorded with the head)."""
    opset: int | None = None
    """Opset of the fused model (>= 16; default: the higher of the detector's and the head's)."""
    strict: bool = False
    """Refuse a head recorded with another detector file or tensor instead of warning."""
    outputs: Sequence[str] = DEFAULT_OUTPUTS
    """Output modes (``conventions.OUTPUT_MODES``)."""
    image_input: ImageInput | str = ImageInput.TENSOR
    """``tensor`` (``images`` [1, 3, H, W] preprocessed by the caller) or ``raw`` (``image`` uint8 [H0, W0, 3])."""
    simplify: bool = True
    """Simplify (onnxslim, else onnxsim), kept only when verified."""
    check_images: Sequence[str | Path] | None = None
    """Image files to verify the finished model on (default: a synthetic image)."""
    fp16: bool = False
    """Compute in float16 where safe (:mod:`roiseg.export.precision`)."""
    int8: str | None = None
    """``head`` or ``all``: static int8 QDQ quantization (:mod:`roiseg.export.int8`); needs ``calibration_images``."""
    calibration_images: str | Path | None = None
    """Folder of real images whose ranges calibrate the int8 model."""
    calibration_count: int = 32
    """Calibration images used (the first ones in name order)."""


@dataclass(frozen=True)
class InstanceOptions:
    """How an instance model reads and keeps the detector's detections (``roiseg fuse --instances``)."""

    detections: str | None = None
    """The detection tensor (default: the one output shaped like detections)."""
    det_format: str | None = None
    """Its format (``roiseg.detection.layouts.DETECTION_FORMATS``; default: from shape and metadata)."""
    decoded: bool | None = None
    """``yolox``: boxes already in pixels (default: an ``Exp`` upstream of the tensor)."""
    params: InstanceParams = InstanceParams()
    """Person classes, score and IoU thresholds, the cap."""
    det_preprocessing: Preprocessing | None = None
    """The detector's own preprocessing when the head was trained with another (default: the head's)."""


def split_options(changes: dict[str, Any], options: FuseOptions | None = None,
                  instances: InstanceOptions | None = None) -> tuple[FuseOptions, InstanceOptions]:
    """``options`` and ``instances`` (defaults when ``None``) with ``changes`` applied by field name;
    TypeError for a name neither has."""
    names = {cls: {f.name for f in fields(cls)} for cls in (FuseOptions, InstanceOptions)}
    unknown = sorted(set(changes) - names[FuseOptions] - names[InstanceOptions])
    if unknown:
        raise TypeError(f"unknown fuse option(s): {', '.join(unknown)}")
    fuse = replace(options or FuseOptions(), **{k: v for k, v in changes.items() if k in names[FuseOptions]})
    inst = replace(instances or InstanceOptions(), **{k: v for k, v in changes.items() if k in names[InstanceOptions]})
    return fuse, inst
