"""A stand-in for the user's YOLO detector ONNX, with the reference tensor names and shapes.

The reference model (``yolov9_e_wholebody25_0100_1x3x640x640_featext.onnx``) takes ``images``
[1, 3, 640, 640] and has the stride-8 feature map ``/model.34/Concat_output_0`` [1, 1024, 80, 80].
:func:`build_stand_in_detector` exports a small network whose ``model.34`` is a ``Concat`` module,
so the TorchScript exporter names that node ``/model.34/Concat`` and its output
``/model.34/Concat_output_0`` exactly as in YOLOv9. Channels and input size are configurable so
tests stay fast; the defaults are the reference shapes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from roiseg.conventions import DEFAULT_FEATURE_TENSOR, DEFAULT_IMAGE_INPUT
from roiseg.utils.atomic import atomic_path

DETECTION_OUTPUT = "output0"


class _ConvAct(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, s: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class _Concat(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class _Detect(nn.Module):
    """Anchor-free YOLO-style output: [B, 4 + classes, A] over strides 8, 16 and 32."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.down16 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.down32 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.pred = nn.Conv2d(channels, 4 + num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p8 = x
        p16 = self.down16(p8)
        p32 = self.down32(p16)
        outs = [self.pred(p).flatten(2) for p in (p8, p16, p32)]
        return torch.cat(outs, dim=2).sigmoid()


class StandInYolo(nn.Module):
    """``images`` [B, 3, H, W] in [0, 1] -> detections [B, 4 + nc, A] (and features [B, C, H/8, W/8]).

    ``self.model`` mirrors YOLO's layer list: index 34 is the stride-8 ``Concat``. Exported as the
    top-level module, its nodes are scoped ``/model.N/...`` like the reference YOLOv9 ONNX.
    """

    def __init__(self, channels: int = 1024, num_classes: int = 25, features_output: bool = False) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError("channels must be even (two concatenated halves)")
        layers: list[nn.Module] = [nn.Identity() for _ in range(36)]
        layers[0] = _ConvAct(3, 32, 3, 2)  # stride 2
        layers[1] = _ConvAct(32, 64, 3, 2)  # stride 4
        layers[2] = _ConvAct(64, 96, 3, 2)  # stride 8
        layers[3] = _ConvAct(96, 96, 3, 1)
        layers[32] = _ConvAct(96, channels // 2, 1, 1)
        layers[33] = _ConvAct(96, channels // 2, 3, 1)
        layers[34] = _Concat()
        layers[35] = _Detect(channels, num_classes)
        self.model = nn.ModuleList(layers)
        self.features_output = features_output

    def forward(self, images: torch.Tensor):
        x = self.model[2](self.model[1](self.model[0](images)))
        y = self.model[3](x)
        feats = self.model[34]([self.model[32](x), self.model[33](y)])
        det = self.model[35](feats)
        return (det, feats) if self.features_output else det


def build_stand_in_detector(
    out: str | Path,
    channels: int = 1024,
    input_hw: tuple[int, int] = (640, 640),
    mode: Literal["full", "featext"] = "full",
    opset: int = 17,
    seed: int = 0,
    num_classes: int = 25,
) -> Path:
    """Export the stand-in detector to ``out`` (written atomically) and return the path.

    ``mode="full"``: one output ``output0`` (detections); the feature tensor is internal.
    ``mode="featext"``: outputs ``output0`` and ``/model.34/Concat_output_0``, like the reference
    ``*_featext.onnx``. The input ``images`` has a static batch of 1, like the reference.
    Weights are drawn from ``seed``, so the same arguments give the same model.
    """
    torch.manual_seed(seed)
    model = StandInYolo(channels, num_classes, features_output=(mode == "featext")).eval()
    dummy = torch.rand(1, 3, *input_hw)
    outputs = [DETECTION_OUTPUT] + ([DEFAULT_FEATURE_TENSOR] if mode == "featext" else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with atomic_path(out) as tmp:
            torch.onnx.export(
                model, (dummy,), str(tmp), opset_version=opset,
                input_names=[DEFAULT_IMAGE_INPUT], output_names=outputs, dynamo=False,
            )
    return Path(out)
