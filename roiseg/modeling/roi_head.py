"""The ROI mask head: frozen detector features + a ROI -> 3-class logits on a ROI grid.

Two designs share this module (chosen by :attr:`HeadConfig.variant`):

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
from typing import Sequence

import torch
from torch import nn
from torchvision.ops import roi_align

from roiseg.conventions import NUM_CLASSES
from roiseg.modeling.config import HeadConfig
from roiseg.modeling.layers import (MaskHeadOutputs, box_prior_logits, conv_gn_relu, gn, roi_boxes,
                                   roi_coordinate_channels)


class RoiMaskHead(MaskHeadOutputs, nn.Module):
    """Features + ROIs (+ image) -> [N, 3, M, M] logits on each ROI's grid."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        g = cfg.groups
        coord = 2 if cfg.variant == "detail" else 0
        self.reduce = conv_gn_relu(cfg.in_channels + coord, cfg.hidden, 1, g)
        self.convs = nn.Sequential(*[conv_gn_relu(cfg.hidden, cfg.hidden, 3, g) for _ in range(cfg.num_convs)])
        ups: list[nn.Module] = []
        ch = cfg.hidden
        for _ in range(int(round(math.log2(cfg.mask_size // cfg.roi_size)))):
            nxt = max(ch // 2, 32)
            ups += [nn.ConvTranspose2d(ch, nxt, 2, stride=2, bias=False), gn(nxt, g), nn.ReLU(inplace=True)]
            ch = nxt
        self.upsample = nn.Sequential(*ups)
        if cfg.variant == "detail":
            d = cfg.detail_channels
            self.detail = nn.Sequential(conv_gn_relu(3 + 2, d, 3, 8), conv_gn_relu(d, d, 3, 8))
            self.fuse = nn.Sequential(conv_gn_relu(ch + d, ch, 3, g), conv_gn_relu(ch, ch, 3, g))
        self.classifier = nn.Conv2d(ch, NUM_CLASSES, 1)
        if cfg.box_prior:  # start from the box: small weights, the bias holds the prior
            with torch.no_grad():
                self.classifier.weight.mul_(0.1)
                self.classifier.bias.copy_(box_prior_logits(cfg.box_prior))

    def forward(
        self,
        features: torch.Tensor | Sequence[torch.Tensor],
        rois: torch.Tensor,
        batch_idx: torch.Tensor,
        images: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            features: [B, C, h, w] detector features at stride ``cfg.stride`` (or [primary, *extras]).
            rois: [N, 4] normalised ``x1, y1, x2, y2``.
            batch_idx: [N] int64, the image of each ROI in the batch.
            images: [B, 3, H, W] preprocessed input images (required by the ``detail`` variant).

        Returns:
            [N, 3, mask_size, mask_size] logits over the ROI.
        """
        cfg = self.cfg
        boxes = roi_boxes(rois, batch_idx, cfg.input_hw)
        if not isinstance(features, torch.Tensor):
            features = features[0]  # extra taps are for the query variant
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
