"""SegLoss, class weights: hand-computed values, masking, optimisation behaviour."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from roiseg.errors import InputError
from roiseg.training.loss import LossConfig, SegLoss, compute_class_weights, resolve_class_weights


def _softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _pixels(logits_rows: list[list[float]]) -> torch.Tensor:
    """[P, 3] per-pixel logits -> [1, 3, 1, P] logits tensor."""
    return torch.tensor(logits_rows, dtype=torch.float32).T.reshape(1, 3, 1, -1)


# Three pixels in a row; the last is outside the ROI and must not count.
LOGITS = [[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [-3.0, 4.0, 1.0]]
TARGETS = torch.tensor([[[0, 1, 2]]], dtype=torch.uint8)
INSIDE = torch.tensor([[[[1.0, 1.0, 0.0]]]])


def test_weighted_cross_entropy_matches_hand_computation() -> None:
    w = [0.5, 2.0, 3.0]
    loss = SegLoss(LossConfig(dice_weight=0.0, class_weights=w))
    total, parts = loss(_pixels(LOGITS), TARGETS, INSIDE)
    p0, p1 = _softmax(LOGITS[0])[0], _softmax(LOGITS[1])[1]
    expected = (w[0] * -math.log(p0) + w[1] * -math.log(p1)) / (w[0] + w[1])
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["ce"] == pytest.approx(expected, rel=1e-5)
    assert parts["total"] == pytest.approx(expected, rel=1e-5)


def test_cross_entropy_agrees_with_torch_on_inside_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 3, 6, 7, generator=g)
    targets = torch.randint(0, 3, (3, 6, 7), generator=g)
    inside = (torch.rand(3, 1, 6, 7, generator=g) > 0.4).float()
    w = torch.tensor([0.3, 1.7, 4.0])
    total, _ = SegLoss(LossConfig(dice_weight=0.0, class_weights=w.tolist()))(logits, targets, inside)
    sel = inside[:, 0].bool()
    flat = logits.permute(0, 2, 3, 1)[sel]  # [P, 3]
    ref = F.cross_entropy(flat, targets[sel], weight=w)
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)


def test_focal_term_matches_hand_computation() -> None:
    gamma = 2.0
    loss = SegLoss(LossConfig(dice_weight=0.0, focal_gamma=gamma))
    total, _ = loss(_pixels(LOGITS), TARGETS, INSIDE)
    p0, p1 = _softmax(LOGITS[0])[0], _softmax(LOGITS[1])[1]
    expected = ((1 - p0) ** gamma * -math.log(p0) + (1 - p1) ** gamma * -math.log(p1)) / 2
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_dice_on_target_class_matches_hand_computation() -> None:
    loss = SegLoss(LossConfig(ce_weight=0.0, dice_weight=1.0, dice_classes=(1,)))
    total, parts = loss(_pixels(LOGITS), TARGETS, INSIDE)
    q0, q1 = _softmax(LOGITS[0])[1], _softmax(LOGITS[1])[1]  # p(target) of the two inside pixels
    # one target pixel (the second): inter = q1, sums = q0 + q1 and 1; smoothing 1
    expected = 1 - (2 * q1 + 1) / (q0 + q1 + 1 + 1)
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["ce"] == 0.0


def test_dice_over_two_classes_averages_rois_and_classes() -> None:
    # ROI 0: pixels (target, non-target) inside; ROI 1: one non-target pixel inside, one outside.
    logits = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 2.0]]).T.reshape(1, 3, 1, 2).repeat(2, 1, 1, 1)
    targets = torch.tensor([[[1, 2]], [[2, 1]]], dtype=torch.uint8)
    inside = torch.tensor([[[[1.0, 1.0]]], [[[1.0, 0.0]]]])
    total, _ = SegLoss(LossConfig(ce_weight=0.0, dice_classes=(1, 2)))(logits, targets, inside)
    a, b = _softmax([0.0, 1.0, 0.0]), _softmax([0.0, 0.0, 2.0])
    d = lambda inter, sp, sg: 1 - (2 * inter + 1) / (sp + sg + 1)  # noqa: E731
    terms = [
        d(a[1], a[1] + b[1], 1), d(b[2], a[2] + b[2], 1),  # ROI 0: class 1, class 2
        d(0.0, a[1], 0), d(a[2], a[2], 1),  # ROI 1: only its first pixel is inside
    ]
    assert total.item() == pytest.approx(sum(terms) / 4, rel=1e-5)


def test_outside_pixels_get_no_gradient_and_do_not_change_the_loss() -> None:
    logits = _pixels(LOGITS).requires_grad_(True)
    loss = SegLoss(LossConfig(dice_classes=(1, 2), focal_gamma=1.0))
    total, _ = loss(logits, TARGETS, INSIDE)
    total.backward()
    assert torch.all(logits.grad[..., 2] == 0)
    assert logits.grad[..., :2].abs().sum() > 0
    changed = _pixels(LOGITS)
    changed[..., 2] = torch.tensor([50.0, -50.0, 7.0]).reshape(3, 1)
    assert loss(changed, TARGETS, INSIDE)[0].item() == pytest.approx(total.item(), rel=1e-6)


def test_optimising_free_logits_decreases_the_loss_and_fits_the_target() -> None:
    g = torch.Generator().manual_seed(1)
    targets = torch.randint(0, 3, (2, 12, 12), generator=g).to(torch.uint8)
    inside = torch.zeros(2, 1, 12, 12)
    inside[0, :, 2:10, 3:9] = 1
    inside[1, :, 0:6, 0:12] = 1
    logits = torch.zeros(2, 3, 12, 12, requires_grad=True)
    loss = SegLoss(LossConfig(dice_classes=(1, 2), class_weights=[0.5, 1.0, 2.0]))
    history = []
    for _ in range(40):  # sign gradient descent: scale-free and light (no torch.optim import)
        total, _ = loss(logits, targets, inside)
        logits.grad = None
        total.backward()
        with torch.no_grad():
            logits -= 0.1 * logits.grad.sign()
        history.append(total.item())
    assert history[-1] < 0.2 * history[0]
    assert all(b < a for a, b in zip(history, history[1:]))  # decreases at every step
    sel = inside[:, 0].bool()
    assert torch.equal(logits.argmax(1)[sel], targets.long()[sel])


def test_empty_rois_give_a_zero_loss_with_a_graph() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    total, parts = SegLoss(LossConfig(dice_weight=0.0))(logits, torch.zeros(2, 4, 4, dtype=torch.uint8), torch.zeros(2, 1, 4, 4))
    total.backward()
    assert total.item() == 0.0 and parts["ce"] == 0.0
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize(
    "cfg",
    [
        LossConfig(dice_classes=(3,)),
        LossConfig(focal_gamma=-1.0),
        LossConfig(class_weights=[1.0, 2.0]),
        LossConfig(class_weights=[1.0, 0.0, 1.0]),
        LossConfig(ce_weight=0.0, dice_weight=0.0),
    ],
)
def test_invalid_config_is_rejected(cfg: LossConfig) -> None:
    with pytest.raises(ValueError):
        SegLoss(cfg)


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="targets"):
        SegLoss(LossConfig())(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 5, dtype=torch.uint8), torch.ones(1, 1, 4, 4))


# --------------------------------------------------------------------------------------------
# Class weights
# --------------------------------------------------------------------------------------------
def test_compute_class_weights_by_hand() -> None:
    # ratios 0.5, 0.4, 0.1: median 0.4 -> 0.8, 1, 4; sum w*r = 0.4 + 0.4 + 0.4 = 1.2 -> / 1.2
    expected = [0.8 / 1.2, 1.0 / 1.2, 4.0 / 1.2]
    assert compute_class_weights({"background": 0.5, "target": 0.4, "non_target": 0.1}) == pytest.approx(expected)
    assert compute_class_weights([0.5, 0.4, 0.1]) == pytest.approx(expected)
    # a very rare class is clipped to 10
    assert compute_class_weights([0.5, 0.4999, 0.0001])[2] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="non_target"):
        compute_class_weights({"background": 0.5, "target": 0.5})


def test_resolve_class_weights_prefers_the_analysis_file(tmp_path) -> None:
    path = tmp_path / "data_analyze.json"
    path.write_text(json.dumps({"class_weights": [0.7, 1.1, 6.0]}))
    assert resolve_class_weights(path, dataset=None) == [0.7, 1.1, 6.0]
    path.write_text(json.dumps({"class_weights": [1.0]}))
    with pytest.raises(InputError, match="data_analyze.json"):
        resolve_class_weights(path)


def _item(targets: list[list[int]], roi: list[float]) -> SimpleNamespace:
    return SimpleNamespace(targets=torch.tensor([targets], dtype=torch.uint8), rois=torch.tensor([roi]))


def test_resolve_class_weights_counts_inside_pixels_of_the_dataset(tmp_path) -> None:
    # 4x4 grids; the ROI covers the left half (8 pixels). Pixels outside are background and
    # must not be counted: inside counts are bg 4, target 2, non-target 2 -> ratios .5, .25, .25
    t = [[0, 1, 0, 0], [0, 1, 0, 0], [2, 0, 0, 0], [2, 0, 0, 0]]
    dataset = [_item(t, [0.0, 0.0, 0.5, 1.0])]
    # median .25 -> w = .5, 1, 1; sum w*r = .25 + .25 + .25 = .75
    expected = [0.5 / 0.75, 1.0 / 0.75, 1.0 / 0.75]
    assert resolve_class_weights(tmp_path / "absent.json", dataset) == pytest.approx(expected)
    assert resolve_class_weights(None, None) == [1.0, 1.0, 1.0]
