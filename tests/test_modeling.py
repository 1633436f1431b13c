"""The head and the paste: shapes, geometry against independent references, exportability."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from roiseg.conventions import roi_inside_mask
from roiseg.modeling import HeadConfig, build_head, count_parameters, masks_from_logits, paste_roi_logits, roi_inside_masks


def test_paste_matches_interpolate_on_pixel_aligned_roi():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 7, 7)
    h, w = 40, 50
    x1, y1, x2, y2 = 10, 5, 31, 33  # pixel box; 21 x 28 pixels
    rois = torch.tensor([[x1 / w, y1 / h, x2 / w, y2 / h]])
    pasted = paste_roi_logits(logits, rois, (h, w))
    ref = F.interpolate(logits, size=(y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
    torch.testing.assert_close(pasted[:, :, y1:y2, x1:x2], ref, atol=1e-5, rtol=1e-5)


def test_paste_is_independent_per_roi():
    torch.manual_seed(1)
    logits = torch.randn(3, 3, 14, 14)
    rois = torch.tensor([[0.1, 0.1, 0.6, 0.7], [0.0, 0.0, 1.0, 1.0], [0.4, 0.5, 0.45, 0.95]])
    together = paste_roi_logits(logits, rois, (32, 48))
    for i in range(3):
        alone = paste_roi_logits(logits[i : i + 1], rois[i : i + 1], (32, 48))
        torch.testing.assert_close(together[i : i + 1], alone)


@pytest.mark.parametrize("roi", [[0.0, 0.0, 1.0, 1.0], [0.13, 0.27, 0.61, 0.99], [0.5, 0.5, 0.51, 0.52], [0.9, 0.0, 1.0, 0.05]])
def test_inside_masks_follow_the_pixel_centre_rule(roi):
    got = roi_inside_masks(torch.tensor([roi]), (37, 53))[0, 0].numpy().astype(bool)
    np.testing.assert_array_equal(got, roi_inside_mask(roi, (37, 53)))


def test_masks_are_probabilities_and_background_outside():
    torch.manual_seed(2)
    rois = torch.tensor([[0.25, 0.25, 0.75, 0.75]])
    logits = paste_roi_logits(torch.randn(1, 3, 8, 8) * 5, rois, (16, 16))
    probs = masks_from_logits(logits, roi_inside_masks(rois, (16, 16)))
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 16, 16))
    assert torch.all(probs[0, 0, :4, :] == 1.0) and torch.all(probs[0, 1:, :, :4] == 0.0)
    assert probs[0, 1:, 4:12, 4:12].sum() > 0


def test_class_softmax_is_torch_softmax_even_for_extreme_logits():
    from roiseg.modeling.paste import class_softmax

    torch.manual_seed(3)
    logits = torch.randn(2, 3, 5, 7) * 4
    logits[0, :, 0, 0] = torch.tensor([90.0, -90.0, 0.0])  # exp(90) overflows float32 without the max shift
    logits[1, :, 1, 1] = torch.tensor([-200.0, -201.0, -250.0])
    got = class_softmax(logits)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, F.softmax(logits, dim=1), atol=1e-6, rtol=0)


def test_class_ids_are_torch_argmax_with_the_first_class_on_ties():
    from roiseg.modeling.paste import class_ids

    torch.manual_seed(4)
    scores = torch.randint(0, 3, (3, 3, 6, 5)).float()  # many ties among three levels
    scores[0, :, 0, 0] = torch.tensor([1.0, 1.0, 1.0])
    scores[1, :, 0, 0] = torch.tensor([0.0, 2.0, 2.0])
    ids = class_ids(scores)
    assert ids.shape == (3, 6, 5) and ids.dtype == torch.int64
    assert torch.equal(ids, torch.argmax(scores, dim=1))
    assert ids[0, 0, 0] == 0 and ids[1, 0, 0] == 1


@pytest.mark.parametrize("variant", ["baseline", "detail"])
def test_head_shapes_and_size_at_reference_channels(variant):
    cfg = HeadConfig(in_channels=1024, stride=8, input_hw=(640, 640), variant=variant)
    head = build_head(cfg)
    assert count_parameters(head) <= 5_000_000
    small = build_head(HeadConfig(in_channels=16, stride=8, input_hw=(64, 96), variant=variant))
    feats, images = torch.randn(2, 16, 8, 12), torch.rand(2, 3, 64, 96)
    rois = torch.tensor([[0.1, 0.1, 0.5, 0.9], [0.2, 0.0, 1.0, 0.6], [0.0, 0.0, 1.0, 1.0]])
    bidx = torch.tensor([0, 1, 1])
    out = small(feats, rois, bidx, images)
    assert out.shape == (3, 3, 56, 56)
    masks = small.predict_masks(feats, rois, bidx, images)
    assert masks.shape == (3, 3, 64, 96)
    out.sum().backward()
    assert all(p.grad is not None for p in small.parameters())


def test_head_uses_the_roi_batch_index():
    torch.manual_seed(3)
    head = build_head(HeadConfig(in_channels=8, stride=8, input_hw=(64, 64), variant="baseline")).eval()
    feats = torch.randn(2, 8, 8, 8)
    roi = torch.tensor([[0.1, 0.1, 0.9, 0.9]])
    a = head(feats, roi, torch.tensor([0]))
    b = head(feats, roi, torch.tensor([1]))
    c = head(feats[1:], roi, torch.tensor([0]))
    assert not torch.allclose(a, b)
    torch.testing.assert_close(b, c)


def test_detail_variant_requires_images():
    head = build_head(HeadConfig(in_channels=8, stride=8, input_hw=(64, 64), variant="detail"))
    with pytest.raises(ValueError, match="images"):
        head(torch.randn(1, 8, 8, 8), torch.tensor([[0.1, 0.1, 0.9, 0.9]]), torch.tensor([0]))


def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError):
        HeadConfig(in_channels=8, stride=8, input_hw=(64, 64), mask_size=50, variant="detail").validate()
    cfg = HeadConfig(in_channels=8, stride=8, input_hw=(64, 96), variant="baseline", mask_size=112)
    assert HeadConfig.from_dict(cfg.to_dict()) == cfg
