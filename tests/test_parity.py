"""Parity suite: the fused model vs the PyTorch path (stand-in and yolox_nano, simplified and not),
the statistics it reports, and that it fails when a tolerance is exceeded."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_graph import fused_once, make_checkpoint, without_head_hash

from graph_tools import ErrorStats as StageStats
from roiseg.verify.stats import stage_result
from roiseg.export.probes import ProbeImages, edge_case_rois, probe_rois
from roiseg.verify.parity import (
    failure_summary, format_table, run_parity,
)

VAL_JSON = "annotations/instances_val2017.json"
VAL_IMAGES = "images/val2017"


# --------------------------------------------------------------------------------------------
# Statistics against independent numpy computations
# --------------------------------------------------------------------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def test_stage_statistics_match_numpy():
    rng = np.random.default_rng(0)
    ref = _softmax(rng.standard_normal((2, 3, 8, 8)) * 3)
    got = ref + rng.normal(0, 1e-6, ref.shape).astype(np.float32)
    # Flip the class at three pixels of ROI 0 by swapping its two best classes.
    flips = [(0, 1, 1), (0, 4, 5), (0, 7, 0)]
    for n, y, x in flips:
        order = np.argsort(ref[n, :, y, x])
        got[n, order[-1], y, x], got[n, order[-2], y, x] = ref[n, order[-2], y, x], ref[n, order[-1], y, x]
    stats = StageStats("fused", "test", iou_class=1)
    stats.update(ref[:1], got[:1])
    stats.update(ref[1:], got[1:])
    res = stage_result(stats, atol=1e-4, min_argmax=0.99)

    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    assert res["max_abs"] == pytest.approx(diff.max(), rel=1e-6)
    assert res["mean_abs"] == pytest.approx(diff.mean(), rel=1e-5)
    true_p99 = np.percentile(diff, 99, method="inverted_cdf")
    assert true_p99 <= res["p99_abs"] <= true_p99 * 1.008
    assert res["max_rel"] == pytest.approx((diff / np.maximum(np.abs(ref), 1e-6)).max(), rel=1e-5)
    assert res["argmax_agreement"] == pytest.approx(1 - len(flips) / (2 * 64))
    a, b = ref.argmax(1) == 1, got.argmax(1) == 1
    assert res["target_iou"] == pytest.approx((a & b).sum() / (a | b).sum())
    assert res["min_roi_target_iou"] == pytest.approx(min((a[i] & b[i]).sum() / max((a[i] | b[i]).sum(), 1) for i in range(2)))
    assert res["passed"] is False  # the swapped pixels differ by far more than 1e-4


def test_feature_stage_tolerance_scales_with_magnitude():
    ref = np.full((1, 4, 2, 2), 100.0, np.float32)
    stats = StageStats("trim", "features", probabilities=False)
    stats.update(ref, ref + np.float32(5e-3))
    res = stats.result(atol=1e-4, min_argmax=0.9999)
    assert res["tolerance"] == pytest.approx(1e-2) and res["passed"] is True
    assert "argmax_agreement" not in res


def test_a_non_finite_output_is_an_infinite_error_and_fails():
    ref = np.full((1, 3, 4, 4), 1 / 3, np.float32)
    for bad in (np.nan, np.inf):
        got = ref.copy()
        got[0, 1, 2, 3] = bad
        stats = StageStats("fused", "test")
        stats.update(ref, got)
        res = stats.result(atol=1e-4, min_argmax=0.5)
        assert res["max_abs"] == np.inf and res["mean_abs"] == np.inf and res["passed"] is False
    clean = StageStats("fused", "test")
    clean.update(ref, ref)
    assert clean.result(atol=1e-4, min_argmax=0.5)["max_abs"] == 0.0


def test_probe_rois_cover_the_edge_cases():
    hw = (416, 320)
    cases = edge_case_rois(hw)
    assert cases["left_border"][0] == 0.0 and cases["right_border"][2] == 1.0
    assert cases["top_border"][1] == 0.0 and cases["bottom_border"][3] == 1.0
    assert (cases["thin_3px_wide"][2] - cases["thin_3px_wide"][0]) * hw[1] == pytest.approx(3.0, abs=1e-4)
    assert (cases["thin_3px_tall"][3] - cases["thin_3px_tall"][1]) * hw[0] == pytest.approx(3.0, abs=1e-4)
    assert cases["whole_image"].tolist() == [0.0, 0.0, 1.0, 1.0]
    gt = np.array([[0.1, 0.2, 0.3, 0.9]], np.float32)
    rois = probe_rois(gt, hw, 16)
    assert rois.shape == (16, 4) and np.array_equal(rois[0], gt[0])
    assert np.all(rois[:, 2] > rois[:, 0]) and np.all(rois[:, 3] > rois[:, 1])
    assert np.all((rois >= 0) & (rois <= 1))


# --------------------------------------------------------------------------------------------
# The parity suite
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("parity")


@pytest.fixture(scope="module")
def checkpoints(stand_in_full, stand_in_checkpoint, yolox_nano, yolox_baseline_checkpoint):
    return {"stand_in": (stand_in_full, stand_in_checkpoint), "yolox_nano": (yolox_nano, yolox_baseline_checkpoint)}


@pytest.mark.parametrize("simplify", [True, False], ids=["simplified", "unsimplified"])
@pytest.mark.parametrize("name", ["stand_in", "yolox_nano"])
def test_fused_model_matches_the_pytorch_path(name, simplify, checkpoints, work, coco_tiny):
    detector, ckpt = checkpoints[name]
    fused = fused_once(work, detector, ckpt, simplify=simplify)
    large = 64 if name == "stand_in" else 0  # 64 ROIs at 416x416 are covered by test_fuse_cli
    report = run_parity(detector, ckpt, fused=fused, annotations=coco_tiny / VAL_JSON, images=coco_tiny / VAL_IMAGES,
                        max_images=1, large_set=large)
    st = report["stages"]
    assert report["passed"], format_table(report)
    assert st["fused"]["max_abs"] <= 1e-4 and st["fused"]["argmax_agreement"] >= 0.9999
    assert st["trim"]["max_abs"] <= 1e-4 * max(1.0, st["trim"]["max_abs_reference"])
    if simplify:
        assert st["simplify"]["passed"] and st["simplify"]["elements"] > 0
    else:
        assert "skipped" in st["simplify"]
    # 1 ROI, GT + edge cases, (stand-in) 64 ROIs, and the contract sets (0 ROIs, awkward boxes) were compared.
    assert report["roi_sets"] == (3 if large else 2) + 2 and report["rois"] >= 1 + 16 + large + 6
    assert len(report["image_names"]) == 1


def test_parity_fails_when_the_paths_differ(checkpoints, work, coco_tiny):
    detector, ckpt = checkpoints["stand_in"]
    fused = without_head_hash(fused_once(work, detector, ckpt, simplify=False), work / "no_hash.onnx")
    other = make_checkpoint(work / "other.pth", detector, seed=1)  # same architecture, other weights
    report = run_parity(detector, other, fused=fused, annotations=coco_tiny / VAL_JSON, images=coco_tiny / VAL_IMAGES,
                        max_images=1, large_set=0)
    assert report["passed"] is False
    assert report["stages"]["fused"]["passed"] is False
    assert report["stages"]["trim"]["passed"] is True  # the detector path is unchanged
    assert "fused: max abs" in failure_summary(report)
    assert "FAIL" in format_table(report)


def test_large_roi_sets_are_compared_in_bounded_chunks(checkpoints, work, coco_tiny, monkeypatch):
    """Peak memory of parity-check: the 64-ROI set's full-resolution outputs never meet the PyTorch path or the
    statistics whole (the head reads the whole set, since a ROI may read the others; it pastes a chunk)."""
    import graph_tools
    from roiseg.verify import roi as parity_mod

    detector, ckpt = checkpoints["stand_in"]
    fused = fused_once(work, detector, ckpt, simplify=True)
    seen, arenas = [], []
    paste = parity_mod.TorchPath.paste
    def pasted(self, computed, modes=("probs",), out_hw=None, part=None):
        got = paste(self, computed, modes, out_hw, part)
        seen.append(len(next(iter(got.values()))))
        return got

    monkeypatch.setattr(parity_mod.TorchPath, "paste", pasted)
    create = graph_tools.create_session
    monkeypatch.setattr(graph_tools, "create_session", lambda *a, **k: arenas.append(k.get("arena", True)) or create(*a, **k))
    report = run_parity(detector, ckpt, fused=fused, annotations=coco_tiny / VAL_JSON, images=coco_tiny / VAL_IMAGES,
                        max_images=1, large_set=64)
    assert report["passed"] and report["rois"] >= 64
    assert max(seen) == parity_mod.COMPARE_CHUNK and sum(seen) >= 64
    assert arenas and not any(arenas)  # every parity session frees its buffers after a run


def test_probe_images_are_read_one_at_a_time(checkpoints, work, coco_tiny, monkeypatch):
    """Peak memory of parity-check: an image is read when the comparison reaches it, and at most the one
    before it is still held then (a list of all images would hold every earlier one)."""
    import gc
    import weakref

    detector, ckpt = checkpoints["stand_in"]
    fused = fused_once(work, detector, ckpt, simplify=False)
    read, alive_when_next = [], []
    real_iter = ProbeImages.__iter__

    def tracked(self):
        for probe in real_iter(self):
            gc.collect()
            alive_when_next.append(sum(ref() is not None for ref in read))
            read.append(weakref.ref(probe.image))
            yield probe

    monkeypatch.setattr(ProbeImages, "__iter__", tracked)
    report = run_parity(detector, ckpt, fused=fused, annotations=coco_tiny / VAL_JSON, images=coco_tiny / VAL_IMAGES,
                        max_images=4, large_set=0)
    assert report["passed"] and report["images"] == 4 and len(report["image_names"]) == 4
    assert len(alive_when_next) == 4 and max(alive_when_next) <= 1
