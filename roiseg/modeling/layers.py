"""Pieces every head variant shares: conv blocks, ROI boxes for ``roi_align``, ROI coordinate
channels, and the paste of ROI-grid logits into the input resolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from roiseg.conventions import NON_TARGET, NUM_CLASSES, TARGET
from roiseg.modeling.paste import masks_from_logits, paste_roi_logits, roi_inside_masks, rois_to_pixels


class ExportableGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters and state dict) whose ONNX export also runs on zero ROIs.

    The exporter's own GroupNorm reshapes ``[N, C, H, W]`` to ``[0, G, -1]`` (0 = copy the
    dimension), which cannot be resolved when ``N = 0``. While exporting, this module computes the
    same normalisation with a ``[-1, G, C/G*H*W]`` reshape (the spatial size is static per layer)
    and one ``InstanceNormalization`` (a single op that a float16 conversion can keep in float32).
    In PyTorch it is ``nn.GroupNorm``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            return super().forward(x)
        c, g = self.num_channels, self.num_groups
        spatial = [int(s) for s in x.shape[2:]]
        y = x.reshape(-1, g, (c // g) * math.prod(spatial))  # each group one "instance" channel
        ones, zeros = torch.ones(g, dtype=x.dtype), torch.zeros(g, dtype=x.dtype)
        y = F.instance_norm(y, weight=ones, bias=zeros, eps=self.eps).reshape(-1, c, *spatial)
        if self.affine:
            shape = [1, c] + [1] * len(spatial)
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def gn(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with as many groups as divide ``channels`` (at most ``groups``); exportable for N = 0."""
    return ExportableGroupNorm(math.gcd(groups, channels), channels)


def conv_gn_relu(cin: int, cout: int, k: int, groups: int) -> nn.Sequential:
    """k x k conv (same padding, no bias), GroupNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), gn(cout, groups), nn.ReLU(inplace=True))


def zero_conv(cin: int, cout: int) -> nn.Conv2d:
    """1x1 conv whose weight and bias start at zero: a residual branch that starts as no branch."""
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def box_prior_logits(margin: float) -> torch.Tensor:
    """[3] class logits of the box prior: background 0, target ``+margin``, non-target ``-margin``."""
    prior = torch.zeros(NUM_CLASSES)
    prior[TARGET], prior[NON_TARGET] = margin, -margin
    return prior


def roi_coordinate_channels(n: int, size: int, like: torch.Tensor) -> torch.Tensor:
    """[N, 2, size, size]: normalised x and y of each cell centre inside the ROI, in [-1, 1]."""
    t = (torch.arange(size, dtype=like.dtype, device=like.device) + 0.5) / size * 2.0 - 1.0
    ys = t[:, None].expand(size, size)
    xs = t[None, :].expand(size, size)
    grid = torch.stack([xs, ys], dim=0)[None]  # [1, 2, S, S]
    return grid.expand(n, 2, size, size)


def roi_boxes(rois: torch.Tensor, batch_idx: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    """[N, 4] normalised ROIs + [N] image index -> [N, 5] ``(batch_index, x1, y1, x2, y2)`` in input pixels."""
    px = rois_to_pixels(rois, input_hw)
    return torch.cat([batch_idx.to(px.dtype)[:, None], px], dim=1)


class MaskHeadOutputs:
    """What every head offers on top of its ``forward`` (ROI-grid logits [N, 3, M, M]).

    Needs ``self.cfg.input_hw`` and ``self.forward(features, rois, batch_idx, images)``.
    """

    def full_logits(self, features, rois, batch_idx, images=None) -> torch.Tensor:
        """[N, 3, H, W] logits pasted into the input resolution."""
        return paste_roi_logits(self.forward(features, rois, batch_idx, images), rois, self.cfg.input_hw)

    def predict_masks(self, features, rois, batch_idx, images=None) -> torch.Tensor:
        """[N, 3, H, W] class probabilities at input resolution; background (p=1) outside each ROI."""
        logits = self.full_logits(features, rois, batch_idx, images)
        return masks_from_logits(logits, roi_inside_masks(rois, self.cfg.input_hw))
