"""The ``query`` head: one mask embedding per image, light per-ROI queries (Mask2Former / SAM shape).

Per image (shared by all its ROIs), a pixel decoder fuses the detector taps (FPN-style: a 1x1
projection of each tap, bilinear resize to stride 4, sum) with a small RGB stem (two stride-2
convs) into one mask embedding ``E`` [B, D, H/4, W/4].

Per ROI, everything is light:

1. ``RoIAlign(E)`` to a ``G x G`` grid over the ROI (``G = mask_size``): the ROI's pixel tokens
   [N, G*G, D] (with ``local_channels``, plus a per-ROI branch on the primary tap: :class:`RoiLocal`; with
   ``neighbour_map``, plus a projection of where the image's other ROIs lie: :mod:`roiseg.modeling.neighbours`),
   plus a learned embedding (an MLP of the cell's normalised x, y) of each cell's
   position inside the ROI: one [G*G, D] table, computed once. Keys, values and the pixel side of
   the class logits are these tokens; no per-token projection runs per ROI: everything per ROI is a
   RoIAlign, a few [3 x G*G] attention maps and dot products.
2. A query from the RoI-aligned primary tap (average-pooled) and the box geometry (normalised
   x1, y1, x2, y2, w, h), turned into three class queries (background, target, non-target).
3. ``query_layers`` decoder layers (Mask2Former): masked cross-attention of the class queries over
   the ROI's tokens, self-attention among the three queries, an MLP. The mask is *soft*: the
   attention logits of class ``c`` get the previous prediction's ``log p_c`` per cell added, so a
   query attends to the cells its class holds, and the network stays a continuous function of its
   inputs (``attention_mask = "hard"``, Mask2Former's 0.5 threshold, only for old checkpoints).
4. Class logits = dot products of the (projected) class queries with the ROI's tokens centred
   over the ROI's cells (they shape the mask), plus a per-class bias that starts at the box prior
   (target inside the ROI) and sets the level: [N, 3, G, G].
5. Optionally (``refine_channels``), a per-ROI RGB refinement: a small residual conv stack over
   the RoI-aligned input image, the logits, the embedding (and with ``neighbour_convs`` the neighbour map,
   which the local branch reads too) at the G x G grid, whose last layer
   starts at zero. Then the same exportable paste as the other heads.

Standard ONNX ops only (RoiAlign, MatMul, Softmax, Resize...); the ROI count is dynamic.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from roiseg.conventions import NUM_CLASSES
from roiseg.modeling.config import HeadConfig
from roiseg.modeling.layers import (MaskHeadOutputs, box_prior_logits, conv_gn_relu, gn, roi_boxes,
                                   roi_coordinate_channels, zero_conv)
from roiseg.modeling.neighbours import neighbour_map, shrink_grid

EMBED_STRIDE: int = 4
"""Stride of the mask embedding in input pixels."""
MASK_NEG: float = -1e4
"""Attention bias of a masked-out cell (added before the softmax)."""


class PixelDecoder(nn.Module):
    """Detector taps + image -> [B, D, H/4, W/4] mask embedding (module docstring)."""

    def __init__(self, channels: Sequence[int], dim: int, groups: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList([conv_gn_relu(c, dim, 1, groups) for c in channels])
        half = max(dim // 2, 8)
        self.stem = nn.Sequential(
            nn.Conv2d(3, half, 3, stride=2, padding=1, bias=False), gn(half, 8),
            nn.ReLU(inplace=True), conv_gn_relu_strided(half, dim, groups),
        )
        self.out = nn.Sequential(conv_gn_relu(dim, dim, 3, groups), nn.Conv2d(dim, dim, 1))

    def forward(self, taps: Sequence[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """taps: [B, C_i, h_i, w_i] at any strides; images [B, 3, H, W] -> [B, D, H/4, W/4]."""
        x = self.stem(images)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        for proj, tap in zip(self.lateral, taps):
            y = proj(tap)
            if tuple(y.shape[-2:]) != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            x = x + y
        return self.out(x)


def conv_gn_relu_strided(cin: int, cout: int, groups: int) -> nn.Sequential:
    """3x3 stride-2 conv, GroupNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                         gn(cout, groups), nn.ReLU(inplace=True))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor | None) -> torch.Tensor:
    """Multi-head attention written with MatMul/Softmax (exports as plain ONNX).

    q [N, Q, D], k and v [N, T, D], bias [N, Q, T] added to the logits of every head -> [N, Q, D].
    """
    n_q, dim = int(q.shape[1]), int(q.shape[2])
    d = dim // heads
    qh = q.reshape(-1, n_q, heads, d).transpose(1, 2)  # [N, h, Q, d]
    kh = k.reshape(-1, int(k.shape[1]), heads, d).transpose(1, 2)  # [N, h, T, d]
    vh = v.reshape(-1, int(v.shape[1]), heads, d).transpose(1, 2)
    logits = torch.matmul(qh, kh.transpose(2, 3)) / math.sqrt(d)  # [N, h, Q, T]
    if bias is not None:
        logits = logits + bias[:, None]
    out = torch.matmul(torch.softmax(logits, dim=-1), vh)  # [N, h, Q, d]
    return out.transpose(1, 2).reshape(-1, n_q, dim)


class DecoderLayer(nn.Module):
    """Masked cross-attention -> self-attention -> MLP, each with a residual and LayerNorm.

    The cross-attention projects only the queries: keys and values are the ROI's tokens as they
    are (keys with the position table added), so its cost per ROI is ``O(3 * T * D)``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_cross, self.o_cross = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.qkv_self = nn.Linear(dim, 3 * dim)
        self.o_self = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(inplace=True), nn.Linear(2 * dim, dim))
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(3)])

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                bias: torch.Tensor) -> torch.Tensor:
        """queries [N, 3, D], keys and values [N, T, D], bias [N, 3, T] -> [N, 3, D]."""
        cross = attend(self.q_cross(queries), keys, values, self.heads, bias)
        x = self.norms[0](queries + self.o_cross(cross))
        q, k, v = self.qkv_self(x).chunk(3, dim=-1)
        x = self.norms[1](x + self.o_self(attend(q, k, v, self.heads, None)))
        return self.norms[2](x + self.mlp(x))


def soft_attention_bias(logits: torch.Tensor) -> torch.Tensor:
    """[N, 3, T] class logits -> [N, 3, T] bias ``log p_c`` per cell (a continuous mask, <= 0)."""
    return torch.log_softmax(logits, dim=1)


def attention_bias(logits: torch.Tensor) -> torch.Tensor:
    """[N, 3, T] class logits -> [N, 3, T] bias: 0 where the class has p >= 0.5, else ``MASK_NEG``.

    A query whose class has no such cell gets no mask at all (Mask2Former's rule for empty masks).
    Discontinuous (a 1e-7 change can flip a cell): kept only for checkpoints made with it.
    """
    keep = (torch.softmax(logits, dim=1) >= 0.5).to(logits.dtype)  # [N, 3, T]
    none = (keep.sum(dim=-1, keepdim=True) == 0).to(logits.dtype)  # [N, 3, 1]
    keep = torch.maximum(keep, none)
    return (1.0 - keep) * MASK_NEG


class RgbRefine(nn.Module):
    """Per-ROI residual on the ROI-grid logits from the RoI-aligned image (PointRend / detail idea).

    Input: image [N, 3, G, G], logits [N, 3, G, G], embedding [N, D, G, G] and, with ``near`` input
    channels, the neighbour map [N, 1, G, G] -> [N, 3, G, G] residual; the last 1x1 conv starts at zero,
    so the refinement starts as the identity.
    """

    def __init__(self, dim: int, channels: int, near: int = 0) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_gn_relu(3 + NUM_CLASSES + dim + near, channels, 3, 8),
                                  conv_gn_relu(channels, channels, 3, 8))
        self.out = zero_conv(channels, NUM_CLASSES)

    def forward(self, image: torch.Tensor, logits: torch.Tensor, grid: torch.Tensor,
                near: torch.Tensor | None = None) -> torch.Tensor:
        parts = [image, logits, grid] if near is None else [image, logits, grid, near]
        return self.out(self.body(torch.cat(parts, dim=1)))


class RoiLocal(nn.Module):
    """Per-ROI local features from the primary tap, added to the ROI's grid embedding (``local_channels``).

    The primary tap RoI-aligned at ``roi_size`` ([N, C, R, R], :meth:`QueryMaskHead.primary_rois`, shared with
    the queries) -> 1x1 reduce to L -> three 3x3 conv
    + GroupNorm + ReLU -> bilinear resize to the G x G ROI grid -> 1x1 to D, which starts at zero
    (the head starts as without the branch). What ``detail``'s per-ROI conv stack gives (reasoning
    about the ROI's own person on the detector's features), at ~L * (C + 27 L) parameters (+ 9 L with the map).
    """

    def __init__(self, cfg: HeadConfig, dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.local_channels
        self.body = nn.Sequential(conv_gn_relu(cfg.in_channels, ch, 1, cfg.groups),  # body[0]: the 1x1 reduce
                                  conv_gn_relu(ch + cfg.neighbour_channels, ch, 3, cfg.groups),
                                  *[conv_gn_relu(ch, ch, 3, cfg.groups) for _ in range(2)])
        self.out = zero_conv(ch, dim)

    def forward(self, pooled: torch.Tensor, near: torch.Tensor | None = None) -> torch.Tensor:
        """pooled [N, C, R, R]: the primary tap RoI-aligned at ``roi_size`` (:meth:`QueryMaskHead.primary_rois`);
        near [N, 1, G, G]: the neighbour map, when the branch reads it (``neighbour_convs``) -> [N, D, G, G]."""
        cfg = self.cfg
        x = self.body[0](pooled)
        if near is not None:
            x = torch.cat([x, shrink_grid(near, cfg.roi_size)], dim=1)
        x = F.interpolate(self.body[1:](x), size=(cfg.mask_size, cfg.mask_size), mode="bilinear", align_corners=False)
        return self.out(x)


class QueryMaskHead(MaskHeadOutputs, nn.Module):
    """Detector taps + ROIs + image -> [N, 3, G, G] logits on each ROI's grid (module docstring)."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        dim = cfg.embed_width
        self.pixel_decoder = PixelDecoder([cfg.in_channels, *cfg.extra_channels], dim, cfg.groups)
        self.query = nn.Sequential(nn.Linear(cfg.in_channels + 6, 2 * dim), nn.ReLU(inplace=True),
                                   nn.Linear(2 * dim, dim))
        self.class_embed = nn.Parameter(torch.randn(NUM_CLASSES, dim) * 0.02)
        self.position = nn.Sequential(nn.Linear(2, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.layers = nn.ModuleList([DecoderLayer(dim, cfg.query_heads) for _ in range(cfg.query_layers)])
        self.mask_embed = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.class_bias = nn.Parameter(box_prior_logits(cfg.box_prior)) if cfg.box_prior else None
        if cfg.box_prior:  # start from the box: the dot products start small, the bias holds the prior
            with torch.no_grad():
                self.mask_embed[-1].weight.mul_(0.1)
                self.mask_embed[-1].bias.zero_()
        self.refine = RgbRefine(dim, cfg.refine_channels, cfg.neighbour_channels) if cfg.refine_channels else None
        self.local = RoiLocal(cfg, dim) if cfg.local_channels else None
        self.person = nn.Conv2d(dim, 1, 1) if cfg.has_person_map else None  # training only (HeadConfig.person_aux)
        self.neighbours = zero_conv(1, dim) if cfg.has_neighbour_map else None  # starts as without it
        self._bias = soft_attention_bias if cfg.attention_mask == "soft" else attention_bias

    def embedding(self, features: torch.Tensor | Sequence[torch.Tensor], images: torch.Tensor) -> torch.Tensor:
        """[B, D, H/4, W/4]: the per-image mask embedding (shared by every ROI of the image)."""
        taps = [features] if isinstance(features, torch.Tensor) else list(features)
        return self.pixel_decoder(taps, images)

    def neighbour_context(self, rois: torch.Tensor, batch_idx: torch.Tensor) -> torch.Tensor | None:
        """[N, 1, G, G] :func:`neighbour_map` of ``rois`` on this head's grid, ``None`` without one."""
        return None if self.neighbours is None else neighbour_map(rois, batch_idx, self.cfg.mask_size)

    def primary_rois(self, primary: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """primary [B, C, h, w] at ``cfg.stride``, boxes [N, 5] in input pixels -> [N, C, R, R] (``R = roi_size``):
        one RoIAlign of the primary tap, read by the queries and the local branch."""
        cfg = self.cfg
        return roi_align(primary, boxes, (cfg.roi_size, cfg.roi_size), spatial_scale=1.0 / cfg.stride,
                         sampling_ratio=cfg.sampling_ratio, aligned=True)

    def _queries(self, pooled: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        """pooled [N, C, R, R] (:meth:`primary_rois`), rois [N, 4] normalised -> [N, 3, D] class queries."""
        pooled = pooled.mean(dim=(2, 3))  # [N, C]
        geometry = torch.cat([rois, rois[:, 2:4] - rois[:, 0:2]], dim=1)  # [N, 6] normalised
        return self.query(torch.cat([pooled, geometry], dim=1))[:, None] + self.class_embed[None]  # [N, 3, D]

    def _logits(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[N, 3, D] x [N, T, D] -> [N, 3, T] (plus the per-class bias)."""
        if self.cfg.centred_logits:  # shape from the dot products, level from the bias (HeadConfig.centred_logits)
            tokens = tokens - tokens.mean(dim=1, keepdim=True)
        logits = torch.matmul(self.mask_embed(queries), tokens.transpose(1, 2))
        return logits if self.class_bias is None else logits + self.class_bias[None, :, None]

    def forward(
        self,
        features: torch.Tensor | Sequence[torch.Tensor],
        rois: torch.Tensor,
        batch_idx: torch.Tensor,
        images: torch.Tensor | None = None,
        with_person: bool = False,
        neighbours: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            features: [B, C, h, w] primary tap at ``cfg.stride``, or [primary, *extra taps].
            rois: [N, 4] normalised ``x1, y1, x2, y2``; batch_idx: [N] int64.
            images: [B, 3, H, W] preprocessed input images (required).
            with_person: also return the person-map logits [B, 1, H/4, W/4] (training, ``cfg.person_aux``).
            neighbours: [N, 1, G, G] neighbour map to use instead of the one of ``rois`` (training, when the
                step keeps a sample of a batch's ROIs: :meth:`neighbour_context` of them all, then the sample).

        Returns:
            [N, 3, G, G] logits over the ROI, ``G = cfg.mask_size`` (and the person map with ``with_person``).
        """
        if images is None:
            raise ValueError("the 'query' head variant needs the input images")
        cfg = self.cfg
        taps = [features] if isinstance(features, torch.Tensor) else list(features)
        boxes = roi_boxes(rois, batch_idx, cfg.input_hw)
        emb = self.embedding(taps, images)
        g = cfg.mask_size
        grid = roi_align(emb, boxes, (g, g), spatial_scale=1.0 / EMBED_STRIDE, sampling_ratio=cfg.sampling_ratio,
                         aligned=True)  # [N, D, G, G]
        pooled = self.primary_rois(taps[0], boxes)
        near = None if self.neighbours is None else (  # [N, 1, G, G]
            neighbours if neighbours is not None else self.neighbour_context(rois, batch_idx))
        near_convs = near if cfg.neighbour_channels else None
        if self.local is not None:
            grid = grid + self.local(pooled, near_convs)
        if near is not None:
            grid = grid + self.neighbours(near)
        pos = self.position(roi_coordinate_channels(1, g, grid)[0].flatten(1).transpose(0, 1))  # [T, D], once
        tokens = grid.reshape(-1, int(grid.shape[1]), g * g).transpose(1, 2)  # [N, T, D]; -1: exports for N = 0
        tokens = tokens + pos[None]  # where in the ROI a cell is: the logits need it to tell the ROI's person
        queries = self._queries(pooled, rois)
        logits = self._logits(queries, tokens)
        for layer in self.layers:
            queries = layer(queries, tokens, tokens, self._bias(logits))
            logits = self._logits(queries, tokens)
        logits = logits.reshape(-1, NUM_CLASSES, g, g)
        if self.refine is not None:
            image = roi_align(images, boxes, (g, g), spatial_scale=1.0, sampling_ratio=cfg.sampling_ratio, aligned=True)
            logits = logits + self.refine(image, logits, grid, near_convs)
        if with_person:
            if self.person is None:
                raise ValueError("with_person needs a head built with person_aux")
            return logits, self.person(emb)
        return logits
