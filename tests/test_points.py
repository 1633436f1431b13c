"""roiseg.training.points: point-sampled loss inputs (values equal the paste, importance sampling, targets)."""

from __future__ import annotations

import torch

from roiseg.modeling.paste import paste_roi_logits
from roiseg.training.points import point_batch, point_pixels, point_sample, sample_points

H, W = 40, 48


def test_values_at_points_equal_the_pasted_logits_at_pixel_centres():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=gen)
    rois = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.0, 0.0, 1.0, 1.0]])
    full = paste_roi_logits(logits, rois, (H, W))
    rows, cols = torch.tensor([[20, 9, 30], [0, 39, 17]]), torch.tensor([[10, 6, 28], [0, 47, 23]])
    px = rois * torch.tensor([W, H, W, H])
    u = (cols + 0.5 - px[:, None, 0]) / (px[:, None, 2] - px[:, None, 0])
    v = (rows + 0.5 - px[:, None, 1]) / (px[:, None, 3] - px[:, None, 1])
    got = point_sample(logits, torch.stack([u, v], dim=-1))  # [2, 3, 3]
    want = torch.stack([full[n, :, rows[n], cols[n]] for n in range(2)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_importance_sampling_picks_the_uncertain_cells():
    # Sure everywhere (class 0 by a margin of 8) except columns 6..9 of 16, where two classes tie.
    logits = torch.zeros(1, 3, 16, 16)
    logits[:, 0] = 8.0
    logits[:, 0, :, 6:10] = 0.0
    logits[:, 1, :, 6:10] = 0.0
    logits[:, 2, :, 6:10] = -8.0
    gen = torch.Generator().manual_seed(1)
    points = sample_points(logits, 400, oversample=3.0, importance=0.75, generator=gen)
    in_band = ((points[0, :, 0] >= 6 / 16) & (points[0, :, 0] < 10 / 16)).float().mean().item()
    assert points.shape == (1, 400, 2) and in_band > 0.6  # uniform sampling would put 25 % there
    uniform = sample_points(logits, 400, importance=0.0, generator=gen)
    assert ((uniform[0, :, 0] >= 6 / 16) & (uniform[0, :, 0] < 10 / 16)).float().mean().item() < 0.4


def test_targets_are_the_class_of_the_pixel_a_point_falls_in_and_outside_points_do_not_count():
    targets = torch.zeros(1, H, W, dtype=torch.uint8)
    targets[0, 10:30, 12:24] = 1  # the ROI's person
    targets[0, 10:30, 24:30] = 2  # someone else inside the ROI
    rois = torch.tensor([[12 / W, 10 / H, 30 / W, 30 / H]])
    pts = torch.tensor([[[0.1, 0.5], [0.9, 0.5], [0.5, 0.999], [0.0, 0.0]]])
    rows, cols, inside = point_pixels(pts, rois, (H, W))
    assert cols.tolist() == [[13, 28, 21, 12]] and rows.tolist() == [[20, 20, 29, 10]]
    assert inside.tolist() == [[True, True, True, True]]
    outside = point_pixels(torch.tensor([[[0.0, 0.5]]]), torch.tensor([[12.6 / W, 10 / H, 30 / W, 30 / H]]), (H, W))[2]
    assert outside.tolist() == [[False]]  # pixel 12's centre 12.5 lies left of the ROI edge 12.6
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    lg, tgt, valid = point_batch(logits, rois, targets, (H, W), num_points=64, generator=torch.Generator().manual_seed(0))
    assert lg.shape == (1, 3, 64, 1) and tgt.shape == (1, 64, 1) and valid.shape == (1, 1, 64, 1)
    assert set(tgt.unique().tolist()) <= {1, 2} and lg.requires_grad
