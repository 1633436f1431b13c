"""Where the other persons are: the neighbour map of each ROI's grid, and its area-mean shrink to a coarser grid.

Pure functions of the ROIs (normalised ``x1, y1, x2, y2``), continuous in them, exported as plain ONNX
(Sigmoid, MatMul, Exp) for any ROI count, 0 included. Read by ``QueryMaskHead`` (``HeadConfig.neighbour_map``).
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from roiseg.modeling.paste import _interp_matrix

NEIGHBOUR_EDGE: float = 0.01
"""Width of a box's soft edge in :func:`neighbour_map` (normalised image units: ~6 pixels at 640)."""


def neighbour_map(rois: torch.Tensor, batch_idx: torch.Tensor, g: int, edge: float = NEIGHBOUR_EDGE) -> torch.Tensor:
    """[N, 1, G, G] in [0, 1): how much the *other* ROIs of the same image cover each cell of each ROI's grid.

    ``rois`` [N, 4] normalised x1, y1, x2, y2; ``batch_idx`` [N]. A box covers a point by a product of
    sigmoids of its signed distance to the four edges (width ``edge``): continuous in the boxes. It is
    separable (a y factor times an x factor), so the sum over the other boxes is one matmul per ROI,
    [G, N] x [N, G]; then ``1 - exp(-sum)``. A box narrower or lower than ``edge`` counts in proportion
    (an empty box — a sanitised non-finite one — not at all).
    """
    t = (torch.arange(g, dtype=rois.dtype, device=rois.device) + 0.5) / g  # [G] cell centres, ROI units
    others = other_rois(batch_idx, rois.dtype)
    size = ((rois[:, 2:4] - rois[:, 0:2]) / edge).clamp(0.0, 1.0)  # [N, 2]
    others = others * (size[:, 0] * size[:, 1])[None, :]

    def cover(axis: int) -> torch.Tensor:  # [N, G, N]: cell k of ROI i inside box j along ``axis``
        lo, hi = rois[:, axis], rois[:, axis + 2]
        c = (lo[:, None] + t[None] * (hi - lo)[:, None])[:, :, None]  # [N, G, 1] normalised image units
        return torch.sigmoid((c - lo[None, None]) / edge) * torch.sigmoid((hi[None, None] - c) / edge)

    total = torch.matmul(cover(1) * others[:, None, :], cover(0).transpose(1, 2))  # [N, G (y), G (x)]
    return (1.0 - torch.exp(-total))[:, None]


def other_rois(batch_idx: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[N] image index -> [N, N] float: 1 where ROI ``j`` is another ROI of ROI ``i``'s image, else 0."""
    idx = torch.arange(batch_idx.shape[0], device=batch_idx.device)
    return ((batch_idx[:, None] == batch_idx[None, :]) & (idx[:, None] != idx[None, :])).to(dtype)


def soft_paste(prob: torch.Tensor, rois: torch.Tensor, canvas_hw: tuple[int, int], edge: float) -> torch.Tensor:
    """[N, 1, G, G] ROI-grid map -> [N, H, W] on an ``(H, W)`` canvas: bilinear (the paste's matrices), times
    each box's soft inside (a product of sigmoids of the signed distance to its edges, ``edge`` normalised
    units wide), so it is continuous in the boxes and ~0 outside them. ``rois`` [N, 4] normalised."""
    h, w = canvas_hw
    g = int(prob.shape[-1])

    def axis(lo: torch.Tensor, hi: torch.Tensor, size: int) -> torch.Tensor:  # [N, size, G]
        c = (torch.arange(size, dtype=rois.dtype, device=rois.device) + 0.5) / size  # [size] normalised
        inside = torch.sigmoid((c[None] - lo[:, None]) / edge) * torch.sigmoid((hi[:, None] - c[None]) / edge)
        return _interp_matrix(lo * size, hi * size, size, g) * inside[:, :, None]

    wy, wx = axis(rois[:, 1], rois[:, 3], h), axis(rois[:, 0], rois[:, 2], w)
    return torch.matmul(torch.matmul(wy, prob.reshape(-1, g, g)), wx.transpose(1, 2))


def others_target_map(prob: torch.Tensor, rois: torch.Tensor, batch_idx: torch.Tensor, canvas_hw: tuple[int, int],
                      edge: float = NEIGHBOUR_EDGE) -> torch.Tensor:
    """[N, 1, G, G] in [0, 1): how much the *other* ROIs of the same image claim each cell of each ROI's grid.

    ``prob`` [N, 1, G, G]: each ROI's target probability on its own grid; ``rois`` [N, 4] normalised. Each map
    is pasted onto a canvas of ``canvas_hw`` (:func:`soft_paste`), the other ROIs' canvases of the image are
    summed (one [N, N] x [N, H*W] MatMul), RoI-aligned back onto each ROI's grid, then ``1 - exp(-sum)``.
    Continuous in ``prob`` and the boxes; exports for any ``N``, 0 included.
    """
    h, w = canvas_hw
    g = int(prob.shape[-1])
    canvas = soft_paste(prob, rois, canvas_hw, edge).reshape(-1, h * w)  # [N, H*W]
    others = torch.matmul(other_rois(batch_idx, rois.dtype), canvas).reshape(-1, 1, h, w)  # [N, 1, H, W]
    scale = torch.tensor([w, h, w, h], dtype=rois.dtype, device=rois.device)
    idx = torch.arange(rois.shape[0], device=rois.device).to(rois.dtype)[:, None]
    boxes = torch.cat([idx, rois * scale], dim=1)  # [N, 5]: ROI i reads its own canvas
    sampled = roi_align(others, boxes, (g, g), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    return 1.0 - torch.exp(-sampled)


def area_matrix(g: int, size: int) -> torch.Tensor:
    """[size, G]: row ``i`` averages the cells of a G-cell axis that block ``i`` of ``size`` covers (by overlap)."""
    lo = torch.arange(size, dtype=torch.float64)[:, None] * g / size  # [size, 1] block edges, in cells
    cells = torch.arange(g, dtype=torch.float64)[None]  # [1, G]
    overlap = (torch.minimum(lo + g / size, cells + 1) - torch.maximum(lo, cells)).clamp(min=0.0)
    return (overlap * size / g).to(torch.float32)


def shrink_grid(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, G, G] -> [N, C, size, size]: each new cell the mean of the old cells it covers (by area; the
    block mean where ``G`` is a multiple of ``size``). Two MatMuls with a constant: continuous, and it exports
    for any ``N``, 0 included (OpenVINO's AvgPool refuses an empty batch)."""
    g, c = int(x.shape[-1]), int(x.shape[1])
    at = area_matrix(g, size).to(device=x.device, dtype=x.dtype).transpose(0, 1)  # [G, size]
    # 2-D products only: onnxruntime's MatMul does not broadcast a [size, G] operand over an empty batch
    cols = torch.matmul(x.reshape(-1, g), at).reshape(-1, c, g, size)  # [N, C, G (y), size (x)]
    rows = torch.matmul(cols.transpose(2, 3).reshape(-1, g), at).reshape(-1, c, size, size)  # [N, C, x, y]
    return rows.transpose(2, 3)
