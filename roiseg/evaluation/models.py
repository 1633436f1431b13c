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
    """A fused ``.onnx`` ROI model (a :class:`FusedSession`), or a checkpoint run through the PyTorch path
    (needs ``detector``; torch is imported only then). An instance model is refused: it finds its own boxes
    (:func:`roiseg.evaluation.instances.evaluate_instances`)."""
    path = Path(model)
    if path.suffix.lower() == HEAD_ONNX_SUFFIX:
        session = FusedSession(path, device)
        if session.is_instance_model:
            raise InputError(f"{path} is an instance model: it finds its own boxes; it is evaluated with its detections")
        return session
    if detector is None:
        raise InputError(f"{path} is a checkpoint: the PyTorch path needs the detector ONNX it was trained on")
    from roiseg.evaluation.torch_model import TorchMaskModel  # torch: only for a checkpoint

    return TorchMaskModel(path, detector, feature_tensor, device)
