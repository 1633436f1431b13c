"""Builders shared by the graph tests: a checkpoint for a detector without running the training loop."""

from __future__ import annotations

from pathlib import Path

import torch

from roiseg.features.extractor import describe_extractor
from roiseg.modeling import HeadConfig, build_head
from roiseg.training.checkpoint import save_checkpoint

YOLOX_TENSOR = "input.663"
"""Stride-8 [1, 64, 52, 52] feature map of ../shared/extractors/yolox_nano.onnx."""


def make_checkpoint(
    path: str | Path,
    detector: str | Path,
    tensor: str = "/model.34/Concat_output_0",
    variant: str = "detail",
    hidden: int = 32,
    num_convs: int = 2,
    seed: int = 0,
    logit_scale: float = 4.0,
) -> Path:
    """A roiseg checkpoint whose head fits ``detector`` at ``tensor``, with random weights from ``seed``.

    The classifier is scaled by ``logit_scale`` so the three classes are well separated in places
    (like a trained head) instead of all near 1/3.
    """
    info = describe_extractor(detector, tensor)
    cfg = HeadConfig(in_channels=info.channels, stride=info.stride, input_hw=info.input_hw, variant=variant,
                     hidden=hidden, num_convs=num_convs, detail_channels=16)
    torch.manual_seed(seed)
    head = build_head(cfg)
    with torch.no_grad():
        head.classifier.weight.mul_(logit_scale)
        for m in head.modules():  # non-trivial GroupNorm affine, as after training
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    state = {
        "epoch": 1, "head_config": cfg.to_dict(), "model": head.state_dict(), "extractor": info.to_dict(),
        "metrics": {}, "config": {},
    }
    return save_checkpoint(path, state)
