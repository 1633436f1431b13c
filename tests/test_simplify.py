"""graph_tools.simplify_verified: onnxslim first, onnxsim as fallback, either kept only when verified."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import SMALL_INPUT_HW
from helpers_graph import boxes, fused_once

import graph_tools.simplify as simplify
from graph_tools import simplify_verified
from roiseg.export.probes import contract_feeds


@pytest.fixture(scope="module")
def unsimplified(tmp_path_factory, stand_in_full, stand_in_checkpoint):
    work = tmp_path_factory.mktemp("simplify")
    ckpt = stand_in_checkpoint
    return onnx.load(str(fused_once(work, stand_in_full, ckpt, simplify=False)))


@pytest.fixture(scope="module")
def feeds():
    image = np.random.default_rng(0).random((1, 3, *SMALL_INPUT_HW), dtype=np.float32)
    return [{"images": image, "rois": boxes(1)}, {"images": image, "rois": boxes(9, seed=2)}, *contract_feeds(image)]


def test_onnxslim_is_kept_and_leaves_no_more_nodes_than_onnxsim(unsimplified, feeds):
    slim = simplify_verified(unsimplified, feeds)
    sim = simplify_verified(unsimplified, feeds, simplifiers=("onnxsim",))
    assert slim.simplified and slim.tool == "onnxslim" and slim.note.startswith("onnxslim: ")
    assert sim.simplified and sim.tool == "onnxsim"
    assert slim.nodes_after <= sim.nodes_after < slim.nodes_before
    assert slim.max_abs_err <= simplify.SIMPLIFY_ATOL


def test_onnxsim_is_the_fallback_when_onnxslim_fails_or_differs(unsimplified, feeds, monkeypatch):
    def crashes(model):
        raise RuntimeError("slim crashed")

    def differs(model):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        for init in out.graph.initializer:
            if "classifier" in init.name and len(init.dims) == 4:
                arr = onnx.numpy_helper.to_array(init) * 2.0
                init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
                return out
        raise AssertionError("no classifier weight")

    for broken, why in ((crashes, "onnxslim failed: RuntimeError: slim crashed"), (differs, "onnxslim's model differs by")):
        monkeypatch.setitem(simplify.SIMPLIFIERS, "onnxslim", broken)
        result = simplify_verified(unsimplified, feeds)
        assert result.simplified and result.tool == "onnxsim" and why in result.note


def test_unknown_simplifier_is_a_programming_error(unsimplified, feeds):
    with pytest.raises(ValueError, match="unknown simplifier 'slim'"):
        simplify_verified(unsimplified, feeds, simplifiers=("slim",))


def test_the_same_model_and_feeds_are_simplified_once_per_process(unsimplified, feeds, monkeypatch):
    """Exporting one model several ways (float32, float16, int8) simplifies it once: the earlier result, as the
    caller's own copy; other feeds, or another simplifier function under the same name, run again."""
    calls = []

    def counted(model):
        calls.append(1)
        return simplify.run_onnxslim(model)

    monkeypatch.setitem(simplify.SIMPLIFIERS, "onnxslim", counted)
    first = simplify_verified(unsimplified, feeds)
    again = simplify_verified(unsimplified, feeds)
    assert len(calls) == 1 and again.note == first.note and again.tool == "onnxslim"
    assert again.model.SerializeToString() == first.model.SerializeToString()
    again.model.graph.ClearField("node")  # a caller's edit does not reach the next copy
    assert simplify_verified(unsimplified, feeds).model.SerializeToString() == first.model.SerializeToString()
    other = [dict(feeds[0], images=feeds[0]["images"] * 0.5), *feeds[1:]]
    assert simplify_verified(unsimplified, other).simplified and len(calls) == 2
    monkeypatch.setitem(simplify.SIMPLIFIERS, "onnxslim", lambda model: (_ for _ in ()).throw(RuntimeError("broken")))
    fallback = simplify_verified(unsimplified, feeds)
    assert fallback.tool == "onnxsim" and "onnxslim failed: RuntimeError: broken" in fallback.note
