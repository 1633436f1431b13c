"""The fused model's robust contract: zero ROIs, boxes outside [0, 1] or reversed, non-finite boxes.

Every head variant's export runs on N = 0 (onnxruntime, and OpenVINO when its optional group is
installed); the fused model clips and orders boxes and turns a non-finite box into an all-background
mask without changing the other ROIs; the PyTorch reference (``deployed_masks``) does the same.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers_graph import boxes, fused_once, ort_session

from roiseg.export.wrapper import deployed_masks, export_head, sanitize_rois
from roiseg.modeling import HeadConfig, build_head

H, W, C = 64, 96, 16


def _openvino():
    import openvino  # a default dependency group: uv sync installs it

    return openvino


def ov_run(model, feeds: dict) -> list[np.ndarray]:
    """Every output of ``model`` (ModelProto or path) in OpenVINO on CPU at f32 precision."""
    ov = _openvino()
    core = ov.Core()
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    compiled = core.compile_model(core.read_model(src), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    res = compiled(feeds)
    return [np.asarray(res[o]) for o in compiled.outputs]


def _head(variant: str):
    torch.manual_seed(0)
    taps = dict(extra_channels=(8,), extra_strides=(16,)) if variant == "query" else {}
    cfg = HeadConfig(in_channels=C, stride=8, input_hw=(H, W), variant=variant, hidden=32, num_convs=1,
                     detail_channels=8, embed_dim=16, query_layers=1, **taps)
    return build_head(cfg).eval()


def _head_feeds(model, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in model.graph.input:
        shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.random(shape, dtype=np.float32)
    feeds["rois"] = boxes(n) if n else np.zeros((0, 4), np.float32)
    return feeds


@pytest.mark.parametrize("variant", ["baseline", "detail", "query"])
def test_every_head_variant_runs_on_zero_rois(variant):
    model = export_head(_head(variant))
    out = ort_session(model).run(None, _head_feeds(model, 0))[0]
    assert out.shape == (0, 3, H, W) and out.dtype == np.float32
    try:
        ov_out = ov_run(model, _head_feeds(model, 0))[0]
    except pytest.skip.Exception:
        return
    assert ov_out.shape == (0, 3, H, W)


def test_sanitize_rois_clips_orders_and_flags():
    rois = torch.tensor([[-0.2, 0.1, 0.5, 1.3], [0.8, 0.9, 0.3, 0.2], [float("nan"), 0.1, 0.5, 0.5],
                         [0.1, float("-inf"), 0.5, 0.5], [0.2, 0.2, 0.6, 0.7]])
    clean, valid = sanitize_rois(rois)
    assert valid.tolist() == [True, True, False, False, True]
    expected = [[0.0, 0.1, 0.5, 1.0], [0.3, 0.2, 0.8, 0.9], [0, 0, 0, 0], [0, 0, 0, 0], [0.2, 0.2, 0.6, 0.7]]
    assert torch.allclose(clean, torch.tensor(expected))


# --------------------------------------------------------------------------------------------
# The fused model
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fused(tmp_path_factory, stand_in_full, stand_in_checkpoint):
    work = tmp_path_factory.mktemp("contract")
    ckpt = stand_in_checkpoint
    return fused_once(work, stand_in_full, ckpt), ckpt


def _image(seed: int = 0) -> np.ndarray:
    from roiseg.export.probes import smooth_image
    from conftest import SMALL_INPUT_HW

    return smooth_image(SMALL_INPUT_HW, seed=seed)


def test_fused_model_returns_zero_masks_for_zero_rois(fused):
    path, _ = fused
    feeds = {"images": _image(), "rois": np.zeros((0, 4), np.float32)}
    out = ort_session(path).run(None, feeds)[0]
    assert out.shape[0] == 0 and out.shape[1] == 3
    try:
        ov_out = ov_run(path, feeds)[0]
    except pytest.skip.Exception:
        return
    assert ov_out.shape == out.shape


def _awkward_case():
    good_a, good_b = boxes(2, seed=3)
    rois = np.array([good_a, [-0.2, 0.1, 0.5, 1.3], [0.8, 0.9, 0.3, 0.2], [np.nan, 0.1, 0.5, 0.5],
                     [0.1, np.inf, 0.5, 0.5], good_b], np.float32)
    same_as = np.array([good_a, [0.0, 0.1, 0.5, 1.0], [0.3, 0.2, 0.8, 0.9], good_a, good_a, good_b], np.float32)
    return rois, same_as


def _check_awkward(out: np.ndarray, clean: np.ndarray, atol: float) -> None:
    for i in (0, 1, 2, 5):  # good ROIs unchanged, clipped and reversed boxes = their clean versions
        assert np.abs(out[i] - clean[i]).max() <= atol, i
    for i in (3, 4):  # non-finite: every pixel background with p = 1
        assert np.array_equal(out[i, 0], np.ones_like(out[i, 0])) and not out[i, 1:].any()


def test_fused_model_clips_orders_and_isolates_non_finite_boxes(fused):
    path, ckpt = fused
    rois, same_as = _awkward_case()
    image = _image(1)
    sess = ort_session(path)
    out = sess.run(None, {"images": image, "rois": rois})[0]
    clean = sess.run(None, {"images": image, "rois": same_as})[0]
    assert np.isfinite(out).all()
    _check_awkward(out, clean, 1e-6)
    try:
        ov_out = ov_run(path, {"images": image, "rois": rois})[0]
    except pytest.skip.Exception:
        return
    assert np.isfinite(ov_out).all()
    _check_awkward(ov_out, clean, 1e-4)


def test_pytorch_reference_sanitises_like_the_graph(fused, stand_in_full):
    from roiseg.verify.roi import TorchPath
    from roiseg.training.checkpoint import load_head
    from graph_tools import load_model

    path, ckpt = fused
    head, _ = load_head(ckpt)
    ref = TorchPath(load_model(stand_in_full), ["/model.34/Concat_output_0"], head)
    image = _image(2)
    rois, _ = _awkward_case()
    feats = ref.features(image)
    want = ref.masks(feats, image, rois)
    got = ort_session(path).run(None, {"images": image, "rois": rois})[0]
    assert np.abs(got - want).max() < 1e-4
    empty = ref.masks(feats, image, np.zeros((0, 4), np.float32))
    assert empty.shape == (0, *want.shape[1:])
    with torch.no_grad():
        direct = deployed_masks(head, torch.from_numpy(feats[0]), torch.from_numpy(rois), torch.from_numpy(image))
    assert np.array_equal(direct.numpy(), want)
