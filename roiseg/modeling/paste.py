"""Pasting per-ROI predictions into the full input resolution, with ONNX-exportable tensor ops.

A ROI's logits live on an ``M x M`` grid that covers the ROI. Pasting resamples that grid
bilinearly (``align_corners=False``, border clamp) at the centre of every pixel of the
``H x W`` image. Bilinear resampling is separable, so it is two batched matrix products,
``Wy @ L @ Wx^T``, with interpolation matrices built from the ROI coordinates. There is no Python
loop over ROIs and no data-dependent control flow, so the same code traces into plain ONNX
(``MatMul``, ``Relu``, ``Abs``, ``Clip``...) with a dynamic ROI count.

Pixels whose centre lies outside the ROI (half-open box, the rule of
:func:`roiseg.conventions.roi_inside_mask`) get class 0 (background) with probability 1.
"""

from __future__ import annotations

import torch

from roiseg.conventions import BACKGROUND, NUM_CLASSES

MIN_ROI_PIXELS: float = 1e-3
"""Floor on a ROI's width/height in pixels, so degenerate ROIs never divide by zero."""


def _interp_matrix(lo: torch.Tensor, hi: torch.Tensor, size: int, grid: int) -> torch.Tensor:
    """Bilinear interpolation weights from a ``grid``-cell ROI axis to ``size`` image pixels.

    ``lo``, ``hi``: [N] ROI edges in pixels along one axis. Returns [N, size, grid]; row ``p`` holds
    the weights of the grid cells for the centre ``p + 0.5`` of image pixel ``p``.
    """
    centres = torch.arange(size, dtype=lo.dtype, device=lo.device) + 0.5  # [size]
    extent = torch.clamp(hi - lo, min=MIN_ROI_PIXELS)  # [N]
    src = (centres[None, :] - lo[:, None]) / extent[:, None] * grid - 0.5  # [N, size] grid coords
    src = torch.clamp(src, min=0.0, max=float(grid - 1))
    cells = torch.arange(grid, dtype=lo.dtype, device=lo.device)  # [grid]
    return torch.relu(1.0 - torch.abs(src[:, :, None] - cells[None, None, :]))


def rois_to_pixels(rois: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """[N, 4] normalised ``x1, y1, x2, y2`` -> [N, 4] pixel ``x1, y1, x2, y2`` on an ``(H, W)`` grid.

    ``H``, ``W`` are ints, or 0-dim tensors (an image size read from a tensor's shape while exporting,
    so the exported paste works at any size).
    """
    h, w = out_hw
    if isinstance(h, torch.Tensor) or isinstance(w, torch.Tensor):
        scale = torch.stack([torch.as_tensor(v) for v in (w, h, w, h)]).to(device=rois.device, dtype=rois.dtype)
    else:
        scale = torch.tensor([w, h, w, h], dtype=rois.dtype, device=rois.device)
    return rois * scale


def paste_roi_logits(roi_logits: torch.Tensor, rois: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Resample ROI-grid logits into the image.

    Args:
        roi_logits: [N, K, M, M] per-class logits on the ROI grid.
        rois: [N, 4] normalised ``x1, y1, x2, y2`` (the box the grid covers).
        out_hw: output ``(H, W)`` in pixels (the model input resolution).

    Returns:
        [N, K, H, W] logits; outside the ROI they continue the border values (mask them with
        :func:`roi_inside_masks`).
    """
    h, w = out_hw
    m_h, m_w = int(roi_logits.shape[-2]), int(roi_logits.shape[-1])
    px = rois_to_pixels(rois, out_hw)
    wy = _interp_matrix(px[:, 1], px[:, 3], h, m_h)  # [N, H, M]
    wx = _interp_matrix(px[:, 0], px[:, 2], w, m_w)  # [N, W, M]
    rows = torch.matmul(wy[:, None], roi_logits)  # [N, K, H, M]
    return torch.matmul(rows, wx.transpose(1, 2)[:, None])  # [N, K, H, W]


def roi_inside_masks(rois: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """[N, 4] normalised ROIs -> [N, 1, H, W] float {0, 1}: pixel centre inside the half-open box."""
    h, w = out_hw
    px = rois_to_pixels(rois, out_hw)
    cy = torch.arange(h, dtype=rois.dtype, device=rois.device) + 0.5
    cx = torch.arange(w, dtype=rois.dtype, device=rois.device) + 0.5
    in_y = (cy[None, :] >= px[:, 1:2]) & (cy[None, :] < px[:, 3:4])  # [N, H]
    in_x = (cx[None, :] >= px[:, 0:1]) & (cx[None, :] < px[:, 2:3])  # [N, W]
    return (in_y[:, :, None] & in_x[:, None, :]).to(rois.dtype)[:, None]


def class_softmax(logits: torch.Tensor) -> torch.Tensor:
    """[N, K, H, W] logits -> [N, K, H, W] softmax over the class axis (dim 1), as element-wise ops.

    ``exp(x - max_c x) / sum_c exp(x - max_c x)``: the same function as ``F.softmax(x, dim=1)`` (within
    float rounding), exported as ``ReduceMax``, ``Sub``, ``Exp``, ``ReduceSum``, ``Div``. onnxruntime's CPU
    ``Softmax`` on a non-last axis transposes the tensor twice: at [N, 3, 640, 640] it took ~23 ms per ROI
    against 2.1-4.4 ms for these ops (docs/performance.md, "The class softmax").
    """
    exp = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    return exp / exp.sum(dim=1, keepdim=True)


def class_ids(scores: torch.Tensor) -> torch.Tensor:
    """[N, K, H, W] scores (logits or probabilities) -> [N, H, W] int64 class ids: the first class on ties,
    as ``torch.argmax(dim=1)`` and ONNX ``ArgMax``.

    ``torch.max(dim=1).indices`` computes the same ids; ``torch.argmax`` over a non-last dim on CPU is
    ~40x slower (0.38 s per validation batch of 4 ROIs at 416x416, most of a short run's validation).
    """
    return torch.max(scores, dim=1).indices


def masks_from_logits(pasted_logits: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """[N, K, H, W] pasted logits + [N, 1, H, W] inside mask -> [N, K, H, W] class probabilities.

    Inside the ROI: softmax over classes (:func:`class_softmax`). Outside: probability 1 for background.
    """
    probs = class_softmax(pasted_logits)
    classes = torch.arange(NUM_CLASSES, device=probs.device)
    onehot_bg = (classes == BACKGROUND).to(probs.dtype).reshape(1, NUM_CLASSES, 1, 1)
    return probs * inside + onehot_bg * (1.0 - inside)
