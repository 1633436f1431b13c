"""The ROI mask head: frozen detector features + a ROI -> 3-class logits on a ROI grid.

Two designs share one module (chosen by :attr:`HeadConfig.variant`):

* ``"baseline"`` (design A): ``torchvision.ops.roi_align`` (``aligned=True``,
  ``spatial_scale = 1 / stride``) on the stride-``s`` features -> 1x1 reduce -> 3x3 conv stack with
  GroupNorm -> transposed-conv upsampling to the ``mask_size`` grid -> 1x1 to 3 logits.
* ``"detail"``: the baseline plus (a) two ROI-coordinate channels (normalised x, y inside the ROI)
  added to the aligned features, and (b) an image-detail path that RoI-aligns the RGB input image
  itself at ``mask_size`` resolution (``spatial_scale = 1``), encodes it with a few small convs and
  fuses it with the upsampled features before the classifier. The image is an input of the fused
  ONNX graph anyway, so this adds sharp boundaries at a small cost.

ROIs are always normalised ``x1, y1, x2, y2``; the head converts them to input pixels with
:attr:`HeadConfig.input_hw`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn
from torchvision.ops import roi_align

from roiseg.conventions import NUM_CLASSES
from roiseg.modeling.paste import masks_from_logits, paste_roi_logits, roi_inside_masks, rois_to_pixels

Variant = Literal["baseline", "detail"]


@dataclass
class HeadConfig:
    """Hyper-parameters of the head. ``in_channels``, ``stride`` and ``input_hw`` come from the extractor."""

    in_channels: int
    stride: int
    input_hw: tuple[int, int]
    variant: Variant = "detail"
    roi_size: int = 14
    """Side of the RoI-aligned feature grid (cells)."""
    mask_size: int = 56
    """Side of the output logit grid over the ROI (cells); must be ``roi_size * 2**k``."""
    hidden: int = 256
    num_convs: int = 4
    detail_channels: int = 32
    sampling_ratio: int = 2
    """RoIAlign samples per bin along each axis (fixed, so torch and ONNX Runtime agree exactly)."""
    groups: int = 32

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        d = dict(d)
        d["input_hw"] = tuple(d["input_hw"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def validate(self) -> None:
        ups = self.mask_size / self.roi_size
        if ups < 1 or 2 ** round(math.log2(ups)) != ups:
            raise ValueError(f"mask_size ({self.mask_size}) must be roi_size ({self.roi_size}) times a power of 2")
        if self.variant not in ("baseline", "detail"):
            raise ValueError(f"unknown head variant {self.variant!r}; expected 'baseline' or 'detail'")


def _gn(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(groups, channels), channels)


def _conv_gn_relu(cin: int, cout: int, k: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), _gn(cout, groups), nn.ReLU(inplace=True))


def roi_coordinate_channels(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """[N, 2, size, size]: normalised x and y of each cell centre inside the ROI, in [-1, 1]."""
    t = (torch.arange(size, dtype=like.dtype, device=like.device) + 0.5) / size * 2.0 - 1.0
    ys = t[:, None].expand(size, size)
    xs = t[None, :].expand(size, size)
    grid = torch.stack([xs, ys], dim=0)[None]  # [1, 2, S, S]
    return grid.expand(n, 2, size, size)


class RoiMaskHead(nn.Module):
    """Features + ROIs (+ image) -> [N, 3, M, M] logits on each ROI's grid."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        g = cfg.groups
        coord = 2 if cfg.variant == "detail" else 0
        self.reduce = _conv_gn_relu(cfg.in_channels + coord, cfg.hidden, 1, g)
        self.convs = nn.Sequential(*[_conv_gn_relu(cfg.hidden, cfg.hidden, 3, g) for _ in range(cfg.num_convs)])
        ups: list[nn.Module] = []
        ch = cfg.hidden
        for _ in range(int(round(math.log2(cfg.mask_size // cfg.roi_size)))):
            nxt = max(ch // 2, 32)
            ups += [nn.ConvTranspose2d(ch, nxt, 2, stride=2, bias=False), _gn(nxt, g), nn.ReLU(inplace=True)]
            ch = nxt
        self.upsample = nn.Sequential(*ups)
        if cfg.variant == "detail":
            d = cfg.detail_channels
            self.detail = nn.Sequential(_conv_gn_relu(3 + 2, d, 3, 8), _conv_gn_relu(d, d, 3, 8))
            self.fuse = nn.Sequential(_conv_gn_relu(ch + d, ch, 3, g), _conv_gn_relu(ch, ch, 3, g))
        self.classifier = nn.Conv2d(ch, NUM_CLASSES, 1)

    def _boxes(self, rois: torch.Tensor, batch_idx: torch.Tensor) -> torch.Tensor:
        """[N, 5] ``(batch_index, x1, y1, x2, y2)`` in input pixels, as ``roi_align`` takes them."""
        px = rois_to_pixels(rois, self.cfg.input_hw)
        return torch.cat([batch_idx.to(px.dtype)[:, None], px], dim=1)

    def forward(
        self,
        features: torch.Tensor,
        rois: torch.Tensor,
        batch_idx: torch.Tensor,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            features: [B, C, h, w] detector features at stride ``cfg.stride``.
            rois: [N, 4] normalised ``x1, y1, x2, y2``.
            batch_idx: [N] int64, the image of each ROI in the batch.
            images: [B, 3, H, W] preprocessed input images (required by the ``detail`` variant).

        Returns:
            [N, 3, mask_size, mask_size] logits over the ROI.
        """
        cfg = self.cfg
        boxes = self._boxes(rois, batch_idx)
        x = roi_align(features, boxes, (cfg.roi_size, cfg.roi_size), spatial_scale=1.0 / cfg.stride,
                      sampling_ratio=cfg.sampling_ratio, aligned=True)
        n = x.shape[0]
        if cfg.variant == "detail":
            x = torch.cat([x, roi_coordinate_channels(n, cfg.roi_size, x)], dim=1)
        x = self.upsample(self.convs(self.reduce(x)))
        if cfg.variant == "detail":
            if images is None:
                raise ValueError("the 'detail' head variant needs the input images")
            img = roi_align(images, boxes, (cfg.mask_size, cfg.mask_size), spatial_scale=1.0,
                            sampling_ratio=cfg.sampling_ratio, aligned=True)
            img = torch.cat([img, roi_coordinate_channels(n, cfg.mask_size, img)], dim=1)
            x = self.fuse(torch.cat([x, self.detail(img)], dim=1))
        return self.classifier(x)

    def full_logits(self, features, rois, batch_idx, images=None) -> torch.Tensor:
        """[N, 3, H, W] logits pasted into the input resolution (training computes its loss here)."""
        return paste_roi_logits(self.forward(features, rois, batch_idx, images), rois, self.cfg.input_hw)

    def predict_masks(self, features, rois, batch_idx, images=None) -> torch.Tensor:
        """[N, 3, H, W] class probabilities at input resolution; background (p=1) outside each ROI."""
        logits = self.full_logits(features, rois, batch_idx, images)
        return masks_from_logits(logits, roi_inside_masks(rois, self.cfg.input_hw))


def build_head(cfg: HeadConfig) -> RoiMaskHead:
    return RoiMaskHead(cfg)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["HeadConfig", "RoiMaskHead", "build_head", "count_parameters", "roi_coordinate_channels"]
