"""The ``query`` head end to end: extra taps chosen from the graph, training with the point loss,
export with native RoiAlign at N = 1/7/64, fuse and parity (stand-in and yolox_nano)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_graph import YOLOX_TENSOR, ort_session
from helpers_train import make_person_data, tiny_overrides

from graph_tools import load_model, nodes_of_type
from roiseg.verify.parity import format_table, run_parity
from roiseg.features.extractor import OnnxFeatureExtractor, describe_extractor
from roiseg.features.taps import auto_extra_tensors
from roiseg.modeling import HeadConfig, build_head
from roiseg.synthetic.detector import REFERENCE_TAPS
from roiseg.training.checkpoint import save_checkpoint
from roiseg.training.config import load_config
from roiseg.training.engine import train

QUERY = {"head.variant": "query", "head.embed_dim": 16, "head.query_heads": 2, "head.query_layers": 2,
         "head.mask_size": 16, "head.roi_size": 7}


def test_auto_picks_the_taps_feeding_the_primary_at_strides_4_and_16(stand_in_featext, yolox_nano):
    model = load_model(stand_in_featext)
    auto = auto_extra_tensors(model, "/model.34/Concat_output_0", (128, 128))
    assert auto[0] == "/model.19/Concat_output_0" and auto[0] in REFERENCE_TAPS  # the reference's stride-4 neck tap
    info = describe_extractor(stand_in_featext, extra_tensors="auto")
    assert info.extra_strides == (4, 16) and info.extra_tensors == tuple(auto)
    yolox = describe_extractor(yolox_nano, YOLOX_TENSOR, extra_tensors="auto")
    assert yolox.extra_strides == (4, 16) and yolox.extra_feature_hw == ((104, 104), (26, 26))


def test_one_run_gives_every_tap(stand_in_featext):
    ext = OnnxFeatureExtractor(stand_in_featext, device="cpu", extra_tensors=list(REFERENCE_TAPS[:4]))
    x = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32)
    taps = ext.extract(x)
    sess = ort_session(stand_in_featext)
    want = sess.run(list(REFERENCE_TAPS[4:]) + list(REFERENCE_TAPS[:4]), {"images": x[:1]})
    assert [tuple(t.shape[1:]) for t in taps] == [w.shape[1:] for w in want]
    for got, ref in zip(taps, want):
        np.testing.assert_allclose(got[:1].numpy(), ref, atol=1e-5)
    assert ext.calls <= 3  # one batched run (after the one-by-one check), not one run per tap


def _query_checkpoint(path, detector, tensor, seed=0, **fields):
    info = describe_extractor(detector, tensor, extra_tensors="auto")
    cfg = HeadConfig(in_channels=info.channels, stride=info.stride, input_hw=info.input_hw, variant="query",
                     extra_channels=info.extra_channels, extra_strides=info.extra_strides, embed_dim=16,
                     query_heads=2, query_layers=2, mask_size=24, groups=8, **fields)
    torch.manual_seed(seed)
    head = build_head(cfg)
    with torch.no_grad():
        for p in head.mask_embed.parameters():
            p.mul_(4.0)  # well separated classes, like a trained head
        if head.local is not None:  # a branch that contributes, as after training (it starts at zero)
            torch.nn.init.normal_(head.local.out.weight, std=0.5)
        if head.neighbours is not None:  # so does the neighbour map: a ROI's output depends on the others
            torch.nn.init.normal_(head.neighbours.weight, std=2.0)
    return save_checkpoint(path, {"epoch": 1, "head_config": cfg.to_dict(), "model": head.state_dict(),
                                  "extractor": info.to_dict(), "metrics": {}, "config": {}})


@pytest.mark.parametrize("which", ["stand_in", "yolox_nano"])
def test_fused_query_head_runs_any_roi_count_and_passes_parity(which, stand_in_full, yolox_nano, coco_tiny, tmp_path):
    from roiseg.export.fuse import fuse

    detector, tensor = (stand_in_full, "/model.34/Concat_output_0") if which == "stand_in" else (yolox_nano, YOLOX_TENSOR)
    ckpt = _query_checkpoint(tmp_path / "query.pth", detector, tensor)
    # YOLOX-nano's simplified query-head fuse is test_head_v3's (a trained head); here the graph as exported
    fused = fuse(detector, ckpt, out=tmp_path / "fused.onnx", simplify=which == "stand_in").out
    model = load_model(fused)
    assert [vi.name for vi in model.graph.input] == ["images", "rois"] and len(nodes_of_type(model, "RoiAlign")) >= 2
    assert not [n for n in model.graph.node if n.domain not in ("", "ai.onnx")]  # standard ops only
    hw = describe_extractor(detector, tensor).input_hw
    sess = ort_session(fused)
    image = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
    for n in (1, 7, 64):
        xy = np.random.default_rng(n).uniform(0, 0.6, (n, 2)).astype(np.float32)
        rois = np.concatenate([xy, xy + 0.3], axis=1)
        assert sess.run(None, {"images": image, "rois": rois})[0].shape == (n, 3, *hw)
    # a large set on the stand-in: compared in chunks, while every ROI reads the whole set (the neighbour map)
    report = run_parity(detector, ckpt, fused=fused, annotations=coco_tiny / "annotations/instances_val2017.json",
                        images=coco_tiny / "images/val2017", max_images=1, large_set=40 if which == "stand_in" else 0)
    fused_stage = report["stages"]["fused"]
    assert report["passed"] and fused_stage["max_abs"] <= 1e-4 and fused_stage["argmax_agreement"] >= 0.9999
    assert report["stages"]["trim"]["elements"] > 0
    if which == "stand_in":  # the default head on OpenVINO too, the contract's empty ROI set included
        import openvino  # noqa: F401  (a default dependency group: uv sync installs it)
        ov = run_parity(detector, ckpt, fused=fused, annotations=coco_tiny / "annotations/instances_val2017.json",
                        images=coco_tiny / "images/val2017", max_images=1, large_set=0, engine="openvino")
        assert ov["passed"] and ov["engine"] == "openvino" and ov["stages"]["fused"]["max_abs"] <= 1e-4, format_table(ov)


def test_the_local_branch_starts_at_zero_then_exports_and_passes_parity(stand_in_full, coco_tiny, tmp_path):
    from roiseg.export.fuse import fuse

    fields = {"in_channels": 32, "stride": 8, "input_hw": (96, 96), "extra_channels": (16,), "extra_strides": (4,)}
    taps = [torch.randn(2, 32, 12, 12), torch.randn(2, 16, 24, 24)]
    rois, idx, image = torch.tensor([[0.1, 0.1, 0.5, 0.9], [0.3, 0.2, 0.8, 0.7]]), torch.tensor([0, 1]), torch.rand(2, 3, 96, 96)
    torch.manual_seed(0)
    local = build_head(HeadConfig(**fields, local_channels=32)).eval()
    torch.manual_seed(0)
    plain = build_head(HeadConfig(**fields, local_channels=0)).eval()
    plain.load_state_dict({k: v for k, v in local.state_dict().items() if not k.startswith("local.")})
    with torch.no_grad():
        assert torch.equal(local(taps, rois, idx, image), plain(taps, rois, idx, image))  # zero-initialised output
        torch.nn.init.normal_(local.local.out.weight, std=0.5)
        assert (local(taps, rois, idx, image) - plain(taps, rois, idx, image)).abs().max() > 1e-3

    ckpt = _query_checkpoint(tmp_path / "local.pth", stand_in_full, "/model.34/Concat_output_0", local_channels=32)
    fused = fuse(stand_in_full, ckpt, out=tmp_path / "fused.onnx").out
    softmax_axes = {a.i for n in nodes_of_type(load_model(fused), "Softmax") for a in n.attribute if a.name == "axis"}
    assert softmax_axes <= {-1, 3}  # attention only: the class softmax of the full-resolution masks is element-wise ops
    sess = ort_session(fused)
    hw = describe_extractor(stand_in_full, "/model.34/Concat_output_0").input_hw
    img = np.random.default_rng(0).random((1, 3, *hw), dtype=np.float32)
    for n in (0, 1, 7):
        rois_n = np.tile(np.float32([[0.1, 0.2, 0.6, 0.9]]), (n, 1))
        assert sess.run(None, {"images": img, "rois": rois_n})[0].shape == (n, 3, *hw)
    report = run_parity(stand_in_full, ckpt, fused=fused, annotations=coco_tiny / "annotations/instances_val2017.json",
                        images=coco_tiny / "images/val2017", max_images=1, large_set=0)
    assert report["passed"] and report["stages"]["fused"]["max_abs"] <= 1e-4


def test_query_head_trains_with_point_loss_and_no_full_resolution_tensor(tmp_path, stand_in_full, monkeypatch):
    import roiseg.training.step as step

    def no_paste(*args, **kwargs):
        raise AssertionError("the point loss must not paste [N, 3, H, W] logits")

    monkeypatch.setattr(step, "paste_roi_logits", no_paste)
    data = make_person_data(tmp_path / "data", n_train=6, n_val=3)
    over = tiny_overrides(data, stand_in_full, tmp_path / "run", **QUERY, loss__points=64, train__epochs=1)
    summary = train(load_config(None, over))
    state = torch.load(tmp_path / "run" / "best.pth", weights_only=False)
    assert state["extractor"]["extra_tensors"][0] == "/model.19/Concat_output_0"
    assert state["head_config"]["extra_strides"] == [4, 16] and summary["history"][0]["train_rois"] > 0


def test_pytorch_path_of_evaluate_reads_the_extra_taps(stand_in_full, tmp_path):
    from roiseg.export.fuse import fuse
    from roiseg.evaluation.models import load_mask_model

    ckpt = _query_checkpoint(tmp_path / "query.pth", stand_in_full, "/model.34/Concat_output_0")
    torch_model = load_mask_model(ckpt, stand_in_full)
    fused_model = load_mask_model(fuse(stand_in_full, ckpt, out=tmp_path / "fused.onnx").out)
    assert torch_model.extractor.info.extra_strides == (4, 16)
    image = np.random.default_rng(2).random((1, 3, 128, 128), dtype=np.float32)
    rois = np.array([[0.1, 0.1, 0.6, 0.9], [0.3, 0.2, 0.9, 0.7]], np.float32)
    np.testing.assert_allclose(torch_model.roi_probabilities(image, rois), fused_model.roi_probabilities(
        {"images": image}, rois), atol=1e-4)


def test_fuse_at_one_of_the_heads_extra_taps_names_its_primary_tensor(yolox_nano, tmp_path, capsys):
    from roiseg.cli import main

    ckpt = _query_checkpoint(tmp_path / "query.pth", yolox_nano, YOLOX_TENSOR)
    extra = torch.load(ckpt, weights_only=False)["extractor"]["extra_tensors"]
    assert "input.423" in extra
    code = main(["fuse", "--yolo", str(yolox_nano), "--head", str(ckpt), "--feature-tensor", "input.423",
                 "--out", str(tmp_path / "fused.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "one of the extra taps" in err and repr(YOLOX_TENSOR) in err and "repeat" not in err
    assert not (tmp_path / "fused.onnx").exists()
