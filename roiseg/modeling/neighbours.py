"""Where the other persons are: the neighbour map of each ROI's grid, and its area-mean shrink to a coarser grid.

Pure functions of the ROIs (normalised ``x1, y1, x2, y2``), continuous in them, exported as plain ONNX
(Sigmoid, MatMul, Exp) for any ROI count, 0 included. Read by ``QueryMaskHead`` (``HeadConfig.neighbour_map``).
"""

from __future__ import annotations

import torch

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
    idx = torch.arange(rois.shape[0], device=rois.device)
    others = ((batch_idx[:, None] == batch_idx[None, :]) & (idx[:, None] != idx[None, :])).to(rois.dtype)  # [N, N]
    size = ((rois[:, 2:4] - rois[:, 0:2]) / edge).clamp(0.0, 1.0)  # [N, 2]
    others = others * (size[:, 0] * size[:, 1])[None, :]

    def cover(axis: int) -> torch.Tensor:  # [N, G, N]: cell k of ROI i inside box j along ``axis``
        lo, hi = rois[:, axis], rois[:, axis + 2]
        c = (lo[:, None] + t[None] * (hi - lo)[:, None])[:, :, None]  # [N, G, 1] normalised image units
        return torch.sigmoid((c - lo[None, None]) / edge) * torch.sigmoid((hi[None, None] - c) / edge)

    total = torch.matmul(cover(1) * others[:, None, :], cover(0).transpose(1, 2))  # [N, G (y), G (x)]
    return (1.0 - torch.exp(-total))[:, None]


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
