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

import onnx
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
    """Anchor-free YOLO-style output in the Ultralytics format: [B, 4 + classes, A] over strides 8, 16, 32.

    Rows 0-3: box centre x, y and width, height in input pixels (the centre within a cell of its
    anchor, the size 1 to 9 cells); then one sigmoid score per class. Anchors are ordered stride by
    stride, cells row by row, as in YOLOv8/v9/v11 exports.
    """

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.down16 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.down32 = nn.Conv2d(channels, channels, 3, 2, 1)
        self.pred = nn.Conv2d(channels, 4 + num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p8 = x
        p16 = self.down16(p8)
        p32 = self.down32(p16)
        outs = [self._decode(self.pred(p), stride) for p, stride in ((p8, 8), (p16, 16), (p32, 32))]
        return torch.cat(outs, dim=2)

    @staticmethod
    def _decode(t: torch.Tensor, stride: int) -> torch.Tensor:
        b, _, h, w = t.shape
        ys, xs = torch.meshgrid(torch.arange(h, dtype=t.dtype), torch.arange(w, dtype=t.dtype), indexing="ij")
        grid = torch.stack([xs, ys]).reshape(1, 2, h * w) + 0.5
        t = t.flatten(2)
        xy = (grid + t[:, 0:2].sigmoid() * 2.0 - 1.0) * stride
        wh = (t[:, 2:4].sigmoid() * 8.0 + 1.0) * stride
        return torch.cat([xy, wh, t[:, 4:].sigmoid()], dim=1)


class _EndToEnd(nn.Module):
    """Ultralytics' end-to-end output (YOLOv10's ``v10postprocess``): [B, 4 + nc, A] cxcywh + scores ->
    [B, K, 6] rows x1, y1, x2, y2, score, class of the ``K`` best (anchor, class) pairs among the
    ``K`` anchors with the best score, best first; no threshold, no suppression."""

    def __init__(self, max_det: int = 300) -> None:
        super().__init__()
        self.max_det = max_det

    def forward(self, det: torch.Tensor) -> torch.Tensor:
        t = det.transpose(1, 2)  # [B, A, 4 + nc]
        nc, k = t.shape[2] - 4, min(self.max_det, t.shape[1])
        boxes = torch.cat([t[..., 0:2] - t[..., 2:4] / 2, t[..., 0:2] + t[..., 2:4] / 2], dim=-1)
        scores = t[..., 4:]
        index = torch.topk(scores.amax(dim=-1), k, dim=-1).indices.unsqueeze(-1)
        boxes = boxes.gather(1, index.expand(-1, -1, 4))
        scores = scores.gather(1, index.expand(-1, -1, nc))
        best, flat = torch.topk(scores.flatten(1), k, dim=-1)
        labels, which = flat % nc, flat // nc
        boxes = boxes.gather(1, which.unsqueeze(-1).expand(-1, -1, 4))
        return torch.cat([boxes, best.unsqueeze(-1), labels.unsqueeze(-1).to(boxes.dtype)], dim=-1)


class _AnchorBased(nn.Module):
    """A YOLOv5/v7-shaped output from the anchor-free one: [B, 4 + nc, A] -> [B, 3 A, 5 + nc], three
    boxes per cell (the cell's box at 0.5x, 1x and 2x its size, in that order over all cells), then an
    objectness (the cell's best class score, square-rooted, times 0.85, 1 and 0.7 for the three sizes,
    so that the three never tie) and the class scores; boxes decoded (cx, cy, w, h in input pixels),
    scores after the sigmoid, as YOLOv5's export gives them."""

    def forward(self, det: torch.Tensor) -> torch.Tensor:
        t = det.transpose(1, 2)  # [B, A, 4 + nc]
        xy, wh, scores = t[..., 0:2], t[..., 2:4], t[..., 4:]
        obj = scores.amax(dim=-1, keepdim=True).sqrt()
        return torch.cat([torch.cat([xy, wh * size, obj * weight, scores], dim=-1)
                          for size, weight in ((0.5, 0.85), (1.0, 1.0), (2.0, 0.7))], dim=1)


REFERENCE_TAPS: tuple[str, ...] = (
    "/model.3/Concat_output_0", "/model.5/Concat_output_0", "/model.19/Concat_output_0",
    "/model.22/Concat_output_0", DEFAULT_FEATURE_TENSOR,
)
"""The reference featext model's five taps; the stand-in has them with the same names and strides."""


class StandInYolo(nn.Module):
    """``images`` [B, 3, H, W] in [0, 1] -> detections [B, 4 + nc, A] (and the taps of the reference).

    ``self.model`` mirrors YOLO's layer list; exported as the top-level module its nodes are scoped
    ``/model.N/...`` like the reference YOLOv9 ONNX. With ``C = channels`` (1024 in the reference):
    ``model.3`` Concat [C/4, H/4, W/4], ``model.5`` Concat [C/2, H/8, W/8], ``model.8`` stride 16,
    upsampled by ``model.10`` into the neck, ``model.19`` Concat [C/4, H/4, W/4] (stride 4, fed by the
    upsampled stride-8 map), ``model.22`` Concat [C/2, H/8, W/8] and ``model.34`` Concat [C, H/8, W/8],
    the stride-8 feature map, fed by ``model.22`` and ``model.5``.
    """

    def __init__(self, channels: int = 1024, num_classes: int = 25, features_output: bool = False,
                 detections: str = "ultralytics") -> None:
        super().__init__()
        if channels % 8:
            raise ValueError("channels must be a multiple of 8 (the taps have C/8 .. C channels)")
        c2, c4, c8 = channels // 2, channels // 4, channels // 8
        layers: list[nn.Module] = [nn.Identity() for _ in range(36)]
        layers[0] = _ConvAct(3, 16, 3, 2)  # stride 2
        layers[1] = _ConvAct(16, c8, 3, 2)  # stride 4
        layers[2] = _ConvAct(c8, c8, 3, 1)
        layers[3] = _Concat()  # [C/4] stride 4
        layers[4] = _ConvAct(c4, c4, 3, 2)  # stride 8
        layers[5] = _Concat()  # [C/2] stride 8
        layers[8] = _ConvAct(c2, c2, 3, 2)  # stride 16
        layers[9] = _ConvAct(c2, c8, 1, 1)
        layers[10] = nn.Upsample(scale_factor=2.0, mode="nearest")  # back to stride 8
        layers[11] = nn.Upsample(scale_factor=2.0, mode="nearest")  # stride 8 -> 4
        layers[17] = _ConvAct(c4, c8, 1, 1)
        layers[19] = _Concat()  # [C/4] stride 4
        layers[20] = _ConvAct(c4, c4, 3, 2)  # stride 8
        layers[21] = _ConvAct(c8, c4, 3, 1)
        layers[22] = _Concat()  # [C/2] stride 8
        layers[32] = _ConvAct(c2, c2, 1, 1)
        layers[33] = _ConvAct(c2, c2, 3, 1)
        layers[34] = _Concat()  # [C] stride 8
        layers[35] = _Detect(channels, num_classes)
        self.model = nn.ModuleList(layers)
        posts = {"ultralytics": nn.Identity, "end2end": _EndToEnd, "yolov5": _AnchorBased}
        if detections not in posts:
            raise ValueError(f"unknown detection output {detections!r}; expected one of {', '.join(posts)}")
        self.post = posts[detections]()
        self.features_output = features_output

    def forward(self, images: torch.Tensor):
        m = self.model
        s4 = m[1](m[0](images))
        p3 = m[3]([s4, m[2](s4)])
        s8 = m[4](p3)
        p5 = m[5]([s8, s8 * 0.5])
        up16 = m[10](m[9](m[8](p5)))  # stride 16, back to 8
        p19 = m[19]([m[17](p3), m[11](up16)])
        p22 = m[22]([m[20](p19), m[21](up16)])
        feats = m[34]([m[32](p22), m[33](p5)])
        det = m[35](feats)
        det = self.post(det)
        return (det, p3, p5, p19, p22, feats) if self.features_output else det


def build_stand_in_detector(
    out: str | Path,
    channels: int = 1024,
    input_hw: tuple[int, int] = (640, 640),
    mode: Literal["full", "featext"] = "full",
    opset: int = 17,
    seed: int = 0,
    num_classes: int = 25,
    detections: Literal["ultralytics", "end2end", "yolov5"] = "ultralytics",
) -> Path:
    """Export the stand-in detector to ``out`` (written atomically) and return the path.

    ``mode="full"``: one output ``output0`` (detections in the Ultralytics format, with Ultralytics'
    metadata entries ``task``, ``names``, ...); the feature tensor is internal.
    ``mode="featext"``: outputs ``output0`` and the five taps of :data:`REFERENCE_TAPS`, like the
    reference ``*_featext.onnx``. The input ``images`` has a static batch of 1, like the reference.
    ``detections="end2end"``: ``output0`` is Ultralytics' end-to-end output instead, [1, 300, 6] rows
    x1, y1, x2, y2, score, class (as YOLOv10 / YOLO26 exports); ``detections="yolov5"``: the YOLOv5/v7
    layout [1, 3 A, 5 + nc] (decoded boxes, objectness, class scores).
    Weights are drawn from ``seed``, so the same arguments give the same model.
    """
    torch.manual_seed(seed)
    model = StandInYolo(channels, num_classes, features_output=(mode == "featext"), detections=detections).eval()
    dummy = torch.rand(1, 3, *input_hw)
    outputs = [DETECTION_OUTPUT] + (list(REFERENCE_TAPS) if mode == "featext" else [])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with atomic_path(out) as tmp:
            torch.onnx.export(
                model, (dummy,), str(tmp), opset_version=opset,
                input_names=[DEFAULT_IMAGE_INPUT], output_names=outputs, dynamo=False,
            )
            exported = onnx.load(str(tmp))
            for key, value in ultralytics_metadata(input_hw, num_classes).items():
                exported.metadata_props.add(key=key, value=value)
            onnx.save(exported, str(tmp))
    return Path(out)


def ultralytics_metadata(input_hw: tuple[int, int], num_classes: int) -> dict[str, str]:
    """The entries an Ultralytics detection export carries (class 0 is ``person``, as in COCO)."""
    names = {i: "person" if i == 0 else f"class{i}" for i in range(num_classes)}
    return {"author": "roiseg stand-in", "task": "detect", "stride": "32", "batch": "1",
            "imgsz": str(list(input_hw)), "names": str(names)}
