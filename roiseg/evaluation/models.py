"""The model ``roiseg evaluate`` runs: a fused ONNX file (its metadata says a ROI or an instance model),
or a checkpoint through the PyTorch path."""

from __future__ import annotations

from pathlib import Path

from roiseg.conventions import HEAD_ONNX_SUFFIX
from roiseg.errors import InputError
from roiseg.evaluation.roi import MaskModel
from roiseg.runtime.session import FusedSession


def load_mask_model(model: str | Path, detector: str | Path | None = None, feature_tensor: str | None = None,
                    device: str = "auto") -> MaskModel:
    """A fused ``.onnx`` model (a :class:`FusedSession`; an instance model too), or a checkpoint run through
    the PyTorch path (needs ``detector``; torch is imported only then)."""
    path = Path(model)
    if path.suffix.lower() == HEAD_ONNX_SUFFIX:
        return FusedSession(path, device)
    if detector is None:
        raise InputError(f"{path} is a checkpoint: the PyTorch path needs the detector ONNX it was trained on")
    from roiseg.evaluation.torch_model import TorchMaskModel  # torch: only for a checkpoint

    return TorchMaskModel(path, detector, feature_tensor, device)
