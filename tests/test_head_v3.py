"""Head v3: the default head starts from the box, is a continuous function of its inputs, and a
trained YOLOX-nano head passes parity (fused, fp16)."""

from __future__ import annotations

import pytest
import torch
from helpers_graph import YOLOX_TENSOR

from roiseg.conventions import TARGET
from roiseg.modeling import HeadConfig, build_head
from roiseg.modeling.paste import roi_inside_masks
from roiseg.modeling.query_head import attention_bias, soft_attention_bias
from roiseg.training.checkpoint import load_head

ROIS = torch.tensor([[0.1, 0.1, 0.5, 0.9], [0.3, 0.2, 0.8, 0.7]])


def _inputs(cfg: HeadConfig, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    h, w = cfg.input_hw
    taps = [torch.randn(2, cfg.in_channels, h // cfg.stride, w // cfg.stride, generator=gen)]
    taps += [torch.randn(2, c, h // s, w // s, generator=gen) for c, s in zip(cfg.extra_channels, cfg.extra_strides)]
    return taps, torch.rand(2, 3, h, w, generator=gen)


@pytest.mark.parametrize("variant,fields", [("query", {}), ("query", {"local_channels": 0}), ("detail", {})])
def test_an_untrained_head_predicts_the_box(variant, fields):
    probs = {}
    for prior in (4.0, 0.0):
        cfg = HeadConfig(in_channels=32, stride=8, input_hw=(96, 96), extra_channels=(16,), extra_strides=(4,),
                         variant=variant, box_prior=prior, **fields)
        torch.manual_seed(0)
        head = build_head(cfg).eval()
        taps, image = _inputs(cfg)
        with torch.no_grad():
            probs[prior] = head.predict_masks(taps, ROIS, torch.tensor([0, 1]), image)[:, TARGET]
    inside = roi_inside_masks(ROIS, (96, 96))[:, 0] > 0
    assert probs[4.0][inside].min() > 0.95 and probs[4.0][~inside].max() < 1e-6
    assert probs[0.0][inside].mean() < 0.8  # the prior, not chance, makes the box


def test_the_soft_attention_mask_is_continuous_where_the_hard_one_jumps():
    logits = torch.zeros(1, 3, 4)
    logits[0, 1] = torch.tensor([0.6932, 5.0, 5.0, 5.0])  # cell 0: target p just above 0.5, the hard threshold
    nudged = logits.clone()
    nudged[0, 1, 0] -= 2e-4  # now just below
    assert (attention_bias(logits) - attention_bias(nudged)).abs().max() > 1e3
    assert (soft_attention_bias(logits) - soft_attention_bias(nudged)).abs().max() < 2e-4


def test_a_trained_head_moves_less_than_1e_4_for_a_1e_6_feature_change(yolox_trained_head, yolox_nano, coco_tiny):
    from roiseg.conventions import preprocess, read_image
    from roiseg.features.extractor import OnnxFeatureExtractor

    head, state = load_head(yolox_trained_head)
    cfg = head.cfg
    assert cfg.attention_mask == "soft" and cfg.refine_channels > 0 and state["epoch"] >= 1
    ext = OnnxFeatureExtractor(yolox_nano, YOLOX_TENSOR, device="cpu", preprocessing=head_preprocessing(state),
                               extra_tensors=state["extractor"]["extra_tensors"])
    image = preprocess(read_image(coco_tiny / "images/val2017/000000020992.jpg"), cfg.input_hw, ext.preprocessing)
    taps = ext.extract(image)
    image = torch.from_numpy(image)
    rois = torch.tensor([[0.30, 0.12, 0.62, 0.98], [0.05, 0.2, 0.45, 0.9]])
    idx = torch.zeros(2, dtype=torch.int64)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        base = head.predict_masks(taps, rois, idx, image)
        for _ in range(3):
            moved = [t + 1e-6 * torch.randn(t.shape, generator=gen) for t in taps]
            assert (head.predict_masks(moved, rois, idx, image) - base).abs().max() < 1e-4


@pytest.mark.slow
def test_two_epochs_on_coco_tiny_beat_the_whole_box(yolox_trained_head):
    from roiseg.training.metrics_log import read_metrics

    records = read_metrics(yolox_trained_head.parent / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    last = records[-1]
    assert last["mean_roi_target_iou"] > last["box_baseline_roi_target_iou"] + 0.015, last  # measured +0.056 (docs/heads.md "Short runs start from the box")


def head_preprocessing(state):
    from roiseg.conventions import Preprocessing

    return Preprocessing.from_json(state["extractor"]["preprocessing"])


@pytest.mark.slow
def test_a_trained_yolox_head_passes_parity_in_float32_and_float16(yolox_trained_head, yolox_nano, coco_tiny, tmp_path):
    from roiseg.export.fuse import fuse
    from roiseg.verify.parity import run_parity

    ann, images = coco_tiny / "annotations/instances_val2017.json", coco_tiny / "images/val2017"
    fused = fuse(yolox_nano, yolox_trained_head, out=tmp_path / "fused.onnx").out
    report = run_parity(yolox_nano, yolox_trained_head, fused=fused, annotations=ann, images=images, max_images=3,
                        large_set=0)
    assert report["passed"], report["stages"]["fused"]
    assert report["stages"]["fused"]["max_abs"] <= 1e-4
    half = fuse(yolox_nano, yolox_trained_head, out=tmp_path / "fused16.onnx", fp16=True).out
    report16 = run_parity(yolox_nano, yolox_trained_head, fused=half, annotations=ann, images=images, max_images=3,
                          large_set=0)
    assert report16["passed"] and report16["stages"]["fused"]["argmax_agreement"] >= 0.995
