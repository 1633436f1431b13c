"""The training-only person map (``head.person_aux``, ``loss.person_weight``): its target, its loss, that it
trains the shared embedding, and that the exported head is the same without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_train import make_person_data, tiny_overrides

from roiseg.data.dataset import CocoPersonImages, collate_images
from roiseg.errors import InputError
from roiseg.modeling import HeadConfig, build_head
from roiseg.training.config import load_config
from roiseg.training.loss import LossConfig, SegLoss, person_map_loss
from roiseg.training.step import StepSetup, train_step

FIELDS = {"in_channels": 16, "stride": 8, "input_hw": (64, 64)}


def test_the_person_loss_is_least_at_each_cells_person_share():
    person = torch.zeros(1, 8, 8, dtype=torch.uint8)
    person[0, :4, :4] = 1  # cell (0, 0) full
    person[0, 4:, :2] = 1  # cell (1, 0) half
    person[0, 4, 4:] = 1  # cell (1, 1) a quarter
    share = torch.tensor([[1.0, 0.0], [0.5, 0.25]])
    best = torch.logit(share.clamp(1e-4, 1 - 1e-4))[None, None].requires_grad_(True)
    loss = person_map_loss(best, person)
    loss.backward()
    assert best.grad.abs().max() < 1e-3  # the minimum of the BCE: logits = logit(share) per cell
    for shift in (-0.5, 0.5):
        assert person_map_loss(best.detach() + shift, person) > loss + 1e-3
    with pytest.raises(ValueError, match=r"person must be \[B, H, W\]"):
        person_map_loss(best.detach(), torch.zeros(1, 7, 8, dtype=torch.uint8))


def test_items_carry_the_union_of_their_persons_mirrored_with_the_image(tmp_path):
    root = make_person_data(tmp_path / "data", n_train=4, n_val=1)
    ann = root / "annotations/instances_train2017_person_only_no_crowd.json"
    plain = CocoPersonImages(ann, root / "images/train2017", (64, 96))
    mirrored = CocoPersonImages(ann, root / "images/train2017", (64, 96), hflip=1.0)
    for i in range(len(plain)):
        item, flipped = plain[i], mirrored[i]
        masks, _ = plain.instance_masks(i, (64, 96))
        assert torch.equal(item.person, torch.from_numpy(masks.any(axis=0).astype(np.uint8)))
        assert torch.equal(flipped.person, item.person.flip(-1)) and flipped.flipped
        assert bool((item.person[None].expand_as(item.targets)[item.targets > 0] == 1).all())  # targets are persons
    batch = collate_images([plain[0], plain[1]])
    assert batch.person.shape == (2, 64, 96) and batch.person.dtype == torch.uint8


def _setup(head, weight: float) -> StepSetup:
    return StepSetup(model=head, loss_fn=SegLoss(LossConfig()), optimizer=torch.optim.AdamW(head.parameters(), lr=1e-2),
                     scheduler=None, scaler=torch.amp.GradScaler("cuda", enabled=False), input_hw=(64, 64),
                     points=64, person_weight=weight)


def test_the_person_map_trains_the_embedding_only_when_weighted():
    torch.manual_seed(0)
    feats, images = torch.randn(2, 16, 8, 8), torch.rand(2, 3, 64, 64)
    rois, idx = torch.tensor([[0.1, 0.1, 0.6, 0.9], [0.3, 0.2, 0.9, 0.8]]), torch.tensor([0, 1])
    targets = torch.randint(0, 3, (2, 64, 64), dtype=torch.uint8)
    person = torch.zeros(2, 64, 64, dtype=torch.uint8)
    person[:, 8:40, 16:48] = 1
    for weight in (0.0, 1.0):
        head = build_head(HeadConfig(**FIELDS)).train()
        assert head.person is not None
        before = head.person.weight.detach().clone()
        parts, n = train_step(_setup(head, weight), feats, images, rois, idx, targets, person=person)
        moved = not torch.equal(before, head.person.weight)
        assert n == 2 and moved == (weight > 0) and ("person" in parts) == (weight > 0)
        if weight:
            assert parts["total"] > parts["ce"] + parts["dice"]  # the person term is in the optimised total
    with torch.no_grad():
        logits, person_logits = head(feats, rois, idx, images, with_person=True)
    assert person_logits.shape == (2, 1, 16, 16) and logits.shape[0] == 2


def test_the_person_map_leaves_the_heads_output_alone_and_old_checkpoints_load():
    torch.manual_seed(0)
    with_map = build_head(HeadConfig(**FIELDS)).eval()
    without = build_head(HeadConfig(**FIELDS, person_aux=False)).eval()
    assert without.person is None and HeadConfig.from_dict(HeadConfig(**FIELDS).to_dict()).person_aux
    without.load_state_dict({k: v for k, v in with_map.state_dict().items() if not k.startswith("person.")})
    torch.nn.init.normal_(with_map.person.weight, std=1.0)
    args = (torch.randn(1, 16, 8, 8), torch.tensor([[0.1, 0.2, 0.7, 0.9]]), torch.tensor([0]), torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        assert torch.equal(with_map(*args), without(*args))
        with pytest.raises(ValueError, match="person_aux"):
            without(*args, with_person=True)
    legacy = {k: v for k, v in HeadConfig(**FIELDS).to_dict().items() if k != "person_aux"}
    assert not HeadConfig.from_dict(legacy).person_aux  # a checkpoint made before the person map
    assert build_head(HeadConfig(**FIELDS, variant="detail")).cfg.has_person_map is False


def test_a_zero_person_weight_with_the_map_on_is_a_config_error(tmp_path):
    over = tiny_overrides(tmp_path, tmp_path / "det.onnx", tmp_path / "run", head__variant="query",
                          loss__person_weight=0.0)
    with pytest.raises(InputError, match="loss.person_weight"):
        load_config(None, over)
    over["head.person_aux"] = False
    assert load_config(None, over).loss.person_weight == 0.0

