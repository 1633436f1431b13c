"""A checkpoint evaluated through the PyTorch path: features from the detector ONNX (onnxruntime), the
head in torch. Imported only for a checkpoint (``roiseg evaluate --model best.pth --extractor ...``);
an ONNX model is evaluated without torch (:class:`roiseg.runtime.session.FusedSession`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from roiseg.conventions import Preprocessing, preprocess
from roiseg.errors import InputError
from roiseg.export.head_source import load_head_source
from roiseg.features.compat import check_head_features
from roiseg.features.extractor import OnnxFeatureExtractor
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)


class TorchMaskModel:
    """A :class:`roiseg.evaluation.roi.MaskModel`: detector ONNX taps -> the checkpoint's head in torch."""

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

    def image_feed(self, image_bgr: np.ndarray) -> np.ndarray:
        """[1, 3, H, W] float32, preprocessed as the head was trained."""
        return preprocess(image_bgr, self.input_hw, self.preprocessing)

    @torch.no_grad()
    def roi_probabilities(self, image: np.ndarray, rois: np.ndarray) -> np.ndarray:
        """[1, 3, H, W] preprocessed image + [N, 4] normalised xyxy -> [N, 3, H, W] probabilities."""
        device = self.extractor.device
        taps = self.extractor.extract(image)
        feats = taps if len(taps) > 1 else taps[0]
        img = torch.from_numpy(np.ascontiguousarray(image, np.float32)).to(device)
        r = torch.from_numpy(np.ascontiguousarray(rois, np.float32)).to(device)
        idx = torch.zeros(len(r), dtype=torch.int64, device=device)
        return self.head.predict_masks(feats, r, idx, img).float().cpu().numpy()
