"""Point-sampled training targets (PointRend / Mask2Former): the loss on K points per ROI.

Instead of pasting [N, 3, H, W] logits at the full input resolution, the loss is taken on ``K``
points per ROI. Points live in **ROI coordinates** ``(u, v)`` in ``[0, 1]^2`` (0 = the ROI's
left/top edge, 1 = its right/bottom edge). Importance sampling: draw ``oversample * K`` uniform
points, keep the ``importance * K`` where the head is least certain (smallest gap between its two
best class logits, read bilinearly from the ROI-grid logits), and add ``(1 - importance) * K``
fresh uniform points.

Reading logits at a point is ``grid_sample`` on the ROI grid with ``align_corners=False`` and
border padding, which is exactly what the paste computes at a pixel centre
(:func:`roiseg.modeling.paste.paste_roi_logits`); the target of a point is the class of the
input-resolution pixel it falls in, and a point counts only when that pixel's centre lies in the
ROI (the rule of :func:`roiseg.conventions.roi_inside_mask`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from roiseg.modeling.paste import MIN_ROI_PIXELS, rois_to_pixels


def point_sample(grid: Tensor, points: Tensor) -> Tensor:
    """Bilinear values of ``grid`` [N, C, M, M] at ``points`` [N, P, 2] ``(u, v)`` in [0, 1] -> [N, C, P]."""
    loc = (points * 2.0 - 1.0)[:, :, None, :]  # [N, P, 1, 2] in [-1, 1], x first
    return F.grid_sample(grid, loc.to(grid.dtype), mode="bilinear", padding_mode="border", align_corners=False)[..., 0]


def uncertainty(logits: Tensor) -> Tensor:
    """[N, K, P] class logits -> [N, P]: minus the gap between the two best classes (higher = less sure)."""
    top2 = logits.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1])


def sample_points(
    roi_logits: Tensor, num_points: int, oversample: float = 3.0, importance: float = 0.75,
    generator: torch.Generator | None = None,
) -> Tensor:
    """[N, 3, M, M] ROI-grid logits -> [N, num_points, 2] ROI coordinates (module docstring).

    The logits are only read (no gradient flows through the choice of points).
    """
    n = int(roi_logits.shape[0])
    device = roi_logits.device
    n_important = int(round(importance * num_points))
    n_drawn = max(int(round(oversample * num_points)), n_important)
    drawn = torch.rand(n, n_drawn, 2, generator=generator, device="cpu").to(device)
    with torch.no_grad():
        score = uncertainty(point_sample(roi_logits.detach().float(), drawn))  # [N, n_drawn]
    pick = score.topk(n_important, dim=1).indices  # [N, n_important]
    chosen = torch.gather(drawn, 1, pick[:, :, None].expand(-1, -1, 2))
    fresh = torch.rand(n, num_points - n_important, 2, generator=generator, device="cpu").to(device)
    return torch.cat([chosen, fresh], dim=1)


def point_pixels(points: Tensor, rois: Tensor, input_hw: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
    """Pixel of each point on the ``(H, W)`` input grid and whether its centre is inside the ROI.

    points [N, P, 2] ROI coordinates, rois [N, 4] normalised xyxy -> (row [N, P] int64,
    col [N, P] int64, inside [N, P] bool).
    """
    h, w = input_hw
    px = rois_to_pixels(rois, input_hw)  # [N, 4]
    lo, extent = px[:, None, 0:2], torch.clamp(px[:, None, 2:4] - px[:, None, 0:2], min=MIN_ROI_PIXELS)
    pos = lo + points * extent  # [N, P, 2] pixels (x, y)
    col = pos[..., 0].floor().clamp(0, w - 1).long()
    row = pos[..., 1].floor().clamp(0, h - 1).long()
    cx, cy = col.to(px.dtype) + 0.5, row.to(px.dtype) + 0.5
    inside = (cx >= px[:, None, 0]) & (cx < px[:, None, 2]) & (cy >= px[:, None, 1]) & (cy < px[:, None, 3])
    return row, col, inside


def point_targets(targets: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """[N, H, W] class ids at input resolution -> [N, P] int64 class of each point's pixel."""
    n, _, w = targets.shape
    flat = targets.reshape(n, -1).long()
    return torch.gather(flat, 1, rows * w + cols)


def point_batch(
    roi_logits: Tensor, rois: Tensor, targets: Tensor, input_hw: tuple[int, int], num_points: int,
    oversample: float = 3.0, importance: float = 0.75, generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """What the loss needs, shaped like a one-pixel-wide image so :class:`SegLoss` applies as it is.

    Returns (logits [N, 3, P, 1] with gradient, targets [N, P, 1] int64, valid [N, 1, P, 1] float).
    """
    points = sample_points(roi_logits, num_points, oversample, importance, generator)
    rows, cols, inside = point_pixels(points, rois, input_hw)
    logits = point_sample(roi_logits, points)  # [N, 3, P]
    tgt = point_targets(targets, rows, cols)
    return logits[..., None], tgt[..., None], inside.to(logits.dtype)[:, None, :, None]
