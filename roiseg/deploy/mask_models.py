"""The two ways to run a head on an image for evaluation: the fused ONNX model, or the PyTorch path.

Both expose the same small interface (:class:`roiseg.deploy.evaluate.MaskModel`):
``input_hw`` (pixels), ``preprocessing`` and ``predict(image [1,3,H,W] float32, rois [N,4]
normalised x1y1x2y2) -> [N,3,H,W]`` float32 class probabilities at the model input size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from graph_tools import create_session
from roiseg.conventions import DEFAULT_IMAGE_INPUT, FUSED_MASKS_OUTPUT, FUSED_ROIS_INPUT, HEAD_ONNX_SUFFIX, Preprocessing
from roiseg.deploy.head_source import load_head_source
from roiseg.deploy.metadata import read_metadata
from roiseg.errors import InputError, graph_errors
from roiseg.features.compat import check_head_features
from roiseg.features.extractor import OnnxFeatureExtractor
from roiseg.deploy.engines import trt_profiles
from roiseg.features.providers import choose_providers
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)


class FusedMaskModel:
    """A fused roiseg ONNX model in onnxruntime (providers by ``device``: TensorRT > CUDA > CPU)."""

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        self.path = Path(path)
        self.meta = read_metadata(self.path)  # InputError when it is not a roiseg fused model
        with graph_errors():
            profiles = trt_profiles(self.meta.input_hw, self.meta.image_input)
            self.session = create_session(self.path, choose_providers(device, trt_profiles=profiles).providers)
        names = {i.name for i in self.session.get_inputs()}
        if names != {DEFAULT_IMAGE_INPUT, FUSED_ROIS_INPUT}:
            raise InputError(f"{self.path} has inputs {sorted(names)}; expected {DEFAULT_IMAGE_INPUT} and {FUSED_ROIS_INPUT}")
        if self.meta.image_input != "tensor":
            raise InputError(f"{self.path} takes the raw image; evaluate needs a model with the preprocessed "
                             "images input (fuse it with the tensor image input)")
        if "probs" not in self.meta.outputs:
            raise InputError(f"{self.path} has no probabilities output (its outputs: {', '.join(self.meta.outputs)}); "
                             "fuse it with the probs output to evaluate it")
        self.input_hw: tuple[int, int] = self.meta.input_hw
        self.preprocessing: Preprocessing = self.meta.preprocessing
        self.description = f"fused ONNX {self.path.name}"

    def predict(self, image: np.ndarray, rois: np.ndarray) -> np.ndarray:
        """[1, 3, H, W] preprocessed image + [N, 4] normalised xyxy -> [N, 3, H, W] probabilities."""
        feeds = {DEFAULT_IMAGE_INPUT: np.ascontiguousarray(image, np.float32),
                 FUSED_ROIS_INPUT: np.ascontiguousarray(rois, np.float32)}
        return self.session.run([FUSED_MASKS_OUTPUT], feeds)[0]


class TorchMaskModel:
    """The PyTorch path: features from the detector ONNX (onnxruntime), the checkpoint's head in torch."""

    def __init__(self, checkpoint: str | Path, detector: str | Path, feature_tensor: str | None = None,
                 device: str = "auto") -> None:
        source = load_head_source(checkpoint)
        if source.head is None:
            raise InputError(f"{checkpoint} is a head ONNX; the PyTorch path needs a checkpoint (.pth)")
        tensor = feature_tensor or source.feature_tensor
        if tensor is None:
            raise InputError(f"{checkpoint} records no feature tensor; give the tensor the head reads")
        self.extractor = OnnxFeatureExtractor(detector, tensor, device=device, preprocessing=source.preprocessing,
                                              extra_tensors=source.extra_tensors)
        for note in check_head_features(source.cfg, source.extractor, self.extractor.info, source.path):
            LOG.warning(note)
        self.head = source.head.to(self.extractor.device).eval()
        self.input_hw: tuple[int, int] = self.extractor.info.input_hw
        self.preprocessing: Preprocessing = source.preprocessing
        self.description = f"checkpoint {Path(checkpoint).name} on {Path(detector).name}"

    @torch.no_grad()
    def predict(self, image: np.ndarray, rois: np.ndarray) -> np.ndarray:
        """[1, 3, H, W] preprocessed image + [N, 4] normalised xyxy -> [N, 3, H, W] probabilities."""
        device = self.extractor.device
        taps = self.extractor.extract(image)
        feats = taps if len(taps) > 1 else taps[0]
        img = torch.from_numpy(np.ascontiguousarray(image, np.float32)).to(device)
        r = torch.from_numpy(np.ascontiguousarray(rois, np.float32)).to(device)
        idx = torch.zeros(len(r), dtype=torch.int64, device=device)
        return self.head.predict_masks(feats, r, idx, img).float().cpu().numpy()


def load_mask_model(model: str | Path, detector: str | Path | None = None, feature_tensor: str | None = None,
                    device: str = "auto") -> FusedMaskModel | TorchMaskModel:
    """A fused ``.onnx`` model, or a checkpoint run through the PyTorch path (needs ``detector``)."""
    path = Path(model)
    if path.suffix.lower() == HEAD_ONNX_SUFFIX:
        return FusedMaskModel(path, device)
    if detector is None:
        raise InputError(f"{path} is a checkpoint: the PyTorch path needs the detector ONNX it was trained on")
    return TorchMaskModel(path, detector, feature_tensor, device)
