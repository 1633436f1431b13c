"""The neighbour map (``head.neighbour_map``): where the other ROIs of the image lie, on each ROI's grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_graph import ort_session

from roiseg.export.wrapper import export_head
from roiseg.modeling import HeadConfig, build_head
from roiseg.modeling.neighbours import neighbour_map, shrink_grid

FIELDS = {"in_channels": 16, "stride": 8, "input_hw": (64, 64)}


def test_the_map_shows_the_other_boxes_of_the_same_image_only():
    rois = torch.tensor([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    m = neighbour_map(rois, torch.tensor([0, 0, 1]), 8)[:, 0]  # [3, 8, 8]
    assert m.shape == (3, 8, 8) and float(m[2].max()) < 1e-6  # alone in its image
    inside = 1 - np.exp(-1)  # one other box over the cell
    assert 0.01 < float(m[0, :, -1].min()) and float(m[0].max()) < 0.1  # ROI 1 starts past ROI 0's last cell centre
    assert float(m[0, :, :-2].max()) < 1e-6  # and is nowhere near its other cells
    wide = neighbour_map(torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.25, 0.25, 0.75, 0.75]]), torch.tensor([0, 0]), 8)[0, 0]
    assert abs(float(wide[4, 4]) - inside) < 1e-3 and float(wide[0, 0]) < 1e-6  # inside / far outside the other box
    assert neighbour_map(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 8).shape == (0, 1, 8, 8)


def test_the_map_is_continuous_in_the_boxes():
    # the other box's left edge sits on a cell centre of ROI 0's grid (4.5 / 8): a hard inside test would jump
    # by 1 - exp(-1) = 0.63 there when the edge moves by 1e-3; the soft edge moves the map by about 0.025
    rois = torch.tensor([[0.0, 0.0, 1.0, 1.0], [4.5 / 8, 0.0, 1.0, 1.0]], dtype=torch.float64)
    idx = torch.tensor([0, 0])
    base = neighbour_map(rois, idx, 8)
    for k in range(4):
        moved = rois.clone()
        moved[1, k] += 1e-3
        change = float((neighbour_map(moved, idx, 8) - base).abs().max())
        assert change < 0.05, (k, change)
    moved = rois.clone()
    moved[1, 0] += 1e-3
    assert float((neighbour_map(moved, idx, 8) - base).abs().max()) > 1e-3  # it does move: the map reads the box


def test_a_rois_mask_follows_its_neighbours_and_exports():
    torch.manual_seed(0)
    head = build_head(HeadConfig(**FIELDS, neighbour_map=True, neighbour_convs=False)).eval()  # the projection alone
    plain = build_head(HeadConfig(**FIELDS, neighbour_map=False)).eval()
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("neighbours.")})
    feats, image = torch.randn(1, 16, 8, 8), torch.rand(1, 3, 64, 64)
    one, two = torch.tensor([[0.1, 0.1, 0.6, 0.9]]), torch.tensor([[0.1, 0.1, 0.6, 0.9], [0.4, 0.2, 0.9, 0.8]])
    with torch.no_grad():
        assert torch.equal(head(feats, two, torch.tensor([0, 0]), image), plain(feats, two, torch.tensor([0, 0]), image))
        torch.nn.init.normal_(head.neighbours.weight, std=1.0)
        alone = head(feats, one, torch.tensor([0]), image)[0]
        beside = head(feats, two, torch.tensor([0, 0]), image)[0]
    assert float((alone - beside).abs().max()) > 1e-3  # the second box changes the first ROI's mask
    sess = ort_session(export_head(head))
    f, im = feats.numpy(), image.numpy()
    for rois in (np.zeros((0, 4), np.float32), one.numpy(), two.numpy()):
        got = sess.run(None, {"features": f, "rois": rois, "images": im})[0]
        with torch.no_grad():
            ref = head.predict_masks(feats, torch.from_numpy(rois), torch.zeros(len(rois), dtype=torch.int64), image).numpy()
        assert got.shape == (len(rois), 3, 64, 64) and (len(rois) == 0 or np.abs(got - ref).max() < 1e-5)


def test_an_empty_box_is_nobodys_neighbour():
    rois = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.9]])  # a point and a line
    m = neighbour_map(rois, torch.zeros(3, dtype=torch.int64), 16)
    assert float(m[0].abs().max()) == 0.0


class _Wrapped(torch.nn.Module):
    """Stands for DistributedDataParallel: ``module`` is the head; records the keywords of each call."""

    def __init__(self, head):
        super().__init__()
        self.module, self.calls = head, []

    def forward(self, *args, **kwargs):
        self.calls.append(kwargs)
        return self.module(*args, **kwargs)


def test_a_sampled_step_keeps_the_neighbours_of_the_whole_batch():
    from roiseg.training.loss import LossConfig, SegLoss
    from roiseg.training.step import StepSetup, sample_rois, train_step

    torch.manual_seed(0)
    head = build_head(HeadConfig(**FIELDS, neighbour_map=True, person_aux=False)).eval()
    torch.nn.init.normal_(head.neighbours.weight, std=1.0)
    feats, image = torch.randn(1, 16, 8, 8), torch.rand(1, 3, 64, 64)
    rois = torch.tensor([[0.1, 0.1, 0.5, 0.9], [0.4, 0.2, 0.8, 0.9], [0.3, 0.0, 0.9, 0.5]])
    idx = torch.zeros(3, dtype=torch.int64)
    pick = sample_rois(3, 2, seed=7)
    with torch.no_grad():
        whole = head(feats, rois, idx, image)[pick]
        kept = head(feats, rois[pick], idx[pick], image, neighbours=head.neighbour_context(rois, idx)[pick])
        alone = head(feats, rois[pick], idx[pick], image)
    assert torch.allclose(whole, kept, atol=1e-6) and float((whole - alone).abs().max()) > 1e-3
    model = _Wrapped(head)
    setup = StepSetup(model=model, loss_fn=SegLoss(LossConfig()), optimizer=torch.optim.SGD(head.parameters(), lr=0.0),
                      scheduler=None, scaler=torch.amp.GradScaler("cuda", enabled=False), input_hw=(64, 64),
                      max_rois=2, points=64)
    targets = torch.randint(0, 3, (3, 64, 64), dtype=torch.uint8)
    train_step(setup, feats, image, rois, idx, targets, seed=7)
    assert torch.equal(model.calls[-1]["neighbours"], head.neighbour_context(rois, idx)[pick])


def test_copies_of_a_person_are_refused_with_the_neighbour_map(tmp_path):
    from helpers_train import tiny_overrides

    from roiseg.errors import InputError
    from roiseg.training.config import load_config

    over = tiny_overrides(tmp_path, tmp_path / "det.onnx", tmp_path / "run", head__variant="query", data__roi_copies=2)
    with pytest.raises(InputError, match="roi_copies"):
        load_config(None, over)
    over["head.neighbour_map"] = False
    assert load_config(None, over).data.roi_copies == 2


def test_the_conv_stacks_read_the_map_and_the_head_exports():
    """``neighbour_convs``: with the map's 1x1 projection at zero, a ROI's mask still follows its neighbours
    through the local branch and the refinement; the fused head agrees with PyTorch for 0, 1 and 2 ROIs."""
    torch.manual_seed(0)
    head = build_head(HeadConfig(**FIELDS, neighbour_convs=True)).eval()
    assert head.local.body[1][0].in_channels == 64 + 1 and head.refine.body[0][0].in_channels == 3 + 3 + 32 + 1
    feats, image = torch.randn(1, 16, 8, 8), torch.rand(1, 3, 64, 64)
    one, two = torch.tensor([[0.1, 0.1, 0.6, 0.9]]), torch.tensor([[0.1, 0.1, 0.6, 0.9], [0.4, 0.2, 0.9, 0.8]])
    with torch.no_grad():
        start = head(feats, two, torch.tensor([0, 0]), image)
        for conv in (head.local.out, head.refine.out):  # the zero-started outputs: trained heads have weights here
            torch.nn.init.normal_(conv.weight, std=0.1)
        alone = head(feats, one, torch.tensor([0]), image)[0]
        beside = head(feats, two, torch.tensor([0, 0]), image)[0]
    assert torch.allclose(start[:, 1], torch.full_like(start[:, 1], 4.0), atol=0.5)  # still the box prior at start
    assert float(head.neighbours.weight.abs().max()) == 0.0 and float((alone - beside).abs().max()) > 1e-3
    sess = ort_session(export_head(head))
    for rois in (np.zeros((0, 4), np.float32), one.numpy(), two.numpy()):
        got = sess.run(None, {"features": feats.numpy(), "rois": rois, "images": image.numpy()})[0]
        with torch.no_grad():
            ref = head.predict_masks(feats, torch.from_numpy(rois), torch.zeros(len(rois), dtype=torch.int64), image).numpy()
        assert got.shape == (len(rois), 3, 64, 64) and (len(rois) == 0 or np.abs(got - ref).max() < 1e-5)


def test_the_map_shrinks_to_the_local_grid_by_area_means():
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert torch.allclose(shrink_grid(x, 4), torch.nn.functional.avg_pool2d(x, 2))  # 2x2 blocks
    odd = shrink_grid(torch.ones(1, 1, 8, 8), 3)
    assert odd.shape == (1, 1, 3, 3) and torch.allclose(odd, torch.ones_like(odd))  # a mean: constants stay
    ramp = torch.arange(8.0).repeat(8, 1)[None, None]  # x = column index
    # block 0 of 8 / 3 cells: cells 0 and 1 whole, 2/3 of cell 2 -> (0 + 1 + 2 * 2/3) / (8/3) = 0.875
    assert torch.allclose(shrink_grid(ramp, 3)[0, 0, 0], torch.tensor([0.875, 3.5, 6.125]))
    assert shrink_grid(torch.zeros(0, 1, 8, 8), 3).shape == (0, 1, 3, 3)


def test_old_configs_load_without_neighbour_convs():
    """A checkpoint made before the field: its config reads as without it, its weights load strictly and the head
    computes what the head it was made with computes."""
    torch.manual_seed(0)
    made = build_head(HeadConfig(**FIELDS, neighbour_convs=False)).eval()
    old = {k: v for k, v in made.cfg.to_dict().items() if k != "neighbour_convs"}
    loaded = build_head(HeadConfig.from_dict(old)).eval()
    assert not loaded.cfg.neighbour_convs
    loaded.load_state_dict(made.state_dict(), strict=True)
    feats, image = torch.randn(1, 16, 8, 8), torch.rand(1, 3, 64, 64)
    rois, idx = torch.tensor([[0.1, 0.1, 0.6, 0.9], [0.4, 0.2, 0.9, 0.8]]), torch.tensor([0, 0])
    with torch.no_grad():
        assert torch.equal(loaded(feats, rois, idx, image), made(feats, rois, idx, image))


@pytest.mark.parametrize("fields, readers", [({"neighbour_convs": True}, 3), ({"neighbour_convs": False}, 1),
                                             ({"neighbour_map": False}, 0)])
def test_int8_finds_the_convs_that_read_the_map(fields, readers):
    """``fuse --int8`` keeps float every conv the raw map reaches (its projection; with ``neighbour_convs`` the first
    convs of the local branch and the refinement), found in the graph whatever the export names them."""
    from roiseg.export.int8 import map_reading_convs

    model = export_head(build_head(HeadConfig(**FIELDS, **fields)).eval())
    found = map_reading_convs(model)
    assert len(found) == readers
    scopes = {"/neighbours/", "/local/body.1/", "/refine/body/body.0/"}
    assert all(any(s in name for s in scopes) for name in found)  # never a conv reached only through the projection

