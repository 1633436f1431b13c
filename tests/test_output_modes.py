"""Output modes chosen at fuse time: probs, labels, target, roi_logits (+ roi_boxes).

Each mode against ``probs`` of the same model, the parity stages of every mode present, metadata,
and one-line errors for an unknown mode.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import SMALL_INPUT_HW
from helpers_graph import boxes, fused_once, ort_session

from roiseg.cli import main
from roiseg.conventions import output_modes, output_tensors
from roiseg.export.wrapper import INVALID_ROI_LOGITS
from roiseg.runtime.metadata import read_metadata
from roiseg.verify.parity import format_table, run_parity
from roiseg.export.probes import smooth_image
from roiseg.errors import InputError
from roiseg.modeling.paste import masks_from_logits, paste_roi_logits, roi_inside_masks

ALL = ["probs", "labels", "target", "roi_logits"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def ckpt(stand_in_checkpoint):
    return stand_in_checkpoint


@pytest.fixture(scope="module")
def all_modes(work, stand_in_full, ckpt):
    return fused_once(work, stand_in_full, ckpt, outputs=tuple(ALL))


def test_output_modes_are_checked_and_ordered():
    assert output_modes(["roi_logits", "probs"]) == ("probs", "roi_logits")
    assert output_modes(["target,labels"]) == ("labels", "target")
    assert output_tensors(["roi_logits"]) == ["roi_logits", "roi_boxes"]
    with pytest.raises(InputError, match="unknown output mode 'logits'; expected one or more of probs, labels"):
        output_modes(["logits"])
    with pytest.raises(InputError, match="no output mode"):
        output_modes([])


def test_every_mode_against_probs(all_modes):
    model = onnx.load(str(all_modes))
    h, w = SMALL_INPUT_HW
    outs = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert list(outs) == ["masks", "labels", "target", "roi_logits", "roi_boxes"]
    assert outs["labels"] == onnx.TensorProto.UINT8 and outs["target"] == onnx.TensorProto.FLOAT
    assert read_metadata(all_modes).outputs == tuple(ALL)

    rois = np.concatenate([boxes(5, seed=4), [[-0.1, 0.2, 0.4, 1.2], [np.nan, 0, 1, 1]]]).astype(np.float32)
    sess = ort_session(all_modes)
    masks, labels, target, roi_logits, roi_boxes = sess.run(None, {"images": smooth_image((h, w), 3), "rois": rois})
    assert masks.shape == (7, 3, h, w) and labels.shape == target.shape == (7, h, w) and labels.dtype == np.uint8
    assert np.array_equal(labels, masks.argmax(1))
    assert np.array_equal(target, masks[:, 1])
    m = roi_logits.shape[-1]
    assert roi_logits.shape == (7, 3, m, m) and roi_boxes.shape == (7, 4)
    assert np.allclose(roi_boxes[5], [0.0, 0.2, 0.4, 1.0]) and not roi_boxes[6].any()
    assert np.allclose(roi_logits[6], np.asarray(INVALID_ROI_LOGITS, np.float32)[:, None, None])
    # A client that pastes the ROI logits itself gets the probabilities (the non-finite ROI: all background).
    r, lg = torch.from_numpy(roi_boxes), torch.from_numpy(roi_logits)
    pasted = masks_from_logits(paste_roi_logits(lg, r, (h, w)), roi_inside_masks(r, (h, w))).numpy()
    assert np.abs(pasted - masks).max() < 1e-5

    empty = sess.run(None, {"images": smooth_image((h, w), 3), "rois": np.zeros((0, 4), np.float32)})
    assert [e.shape[0] for e in empty] == [0] * 5


def test_parity_covers_every_mode(all_modes, stand_in_full, ckpt, coco_tiny):
    report = run_parity(stand_in_full, ckpt, fused=all_modes, annotations=coco_tiny / "annotations/instances_val2017.json",
                        images=coco_tiny / "images/val2017", max_images=1, large_set=0)
    assert report["passed"], format_table(report)
    for stage in ("fused", "labels", "target", "roi_logits", "roi_boxes"):
        assert report["stages"][stage]["passed"] and report["stages"][stage]["elements"] > 0, stage
    assert report["stages"]["labels"]["argmax_agreement"] >= 0.9999
    assert "labels" in format_table(report)


def test_labels_only_model_and_parity(work, stand_in_full, ckpt):
    path = fused_once(work, stand_in_full, ckpt, outputs=("labels",))
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["labels"]
    report = run_parity(stand_in_full, ckpt, fused=path, large_set=0)
    assert report["passed"], format_table(report)
    assert set(report["stages"]) == {"trim", "simplify", "labels"}


def test_fuse_cli_refuses_an_unknown_mode(work, stand_in_full, ckpt, capsys):
    out = work / "bad.onnx"
    code = main(["fuse", "--yolo", str(stand_in_full), "--head", str(ckpt), "--out", str(out), "--outputs", "probs", "mask"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines == ["error: unknown output mode 'mask'; expected one or more of probs, labels, target, roi_logits"]


def test_the_session_runs_every_output_mode_the_metadata_names(all_modes):
    from roiseg.runtime.session import FusedSession

    fused = FusedSession(all_modes, device="cpu")
    image = np.random.default_rng(3).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    rois = boxes(5, seed=4)
    got = fused.outputs(fused.image_feed(image), rois)
    assert list(got) == output_tensors(ALL) and fused.meta.outputs == tuple(ALL)
    want = ort_session(all_modes).run(output_tensors(ALL), {"images": fused.image_feed(image)["images"], "rois": rois})
    for name, ref in zip(output_tensors(ALL), want):
        np.testing.assert_array_equal(got[name], ref)
    np.testing.assert_array_equal(fused.roi_probabilities(fused.image_feed(image), rois), got["masks"])


def test_predict_and_evaluate_need_the_probs_output(work, stand_in_full, ckpt):
    from roiseg.evaluation.models import load_mask_model
    from roiseg.runtime.predict import RoiPredictor
    from roiseg.runtime.session import FusedSession

    path = fused_once(work, stand_in_full, ckpt, outputs=("labels",))
    for cls in (RoiPredictor, FusedSession, lambda p, device: load_mask_model(p, device=device)):
        with pytest.raises(InputError, match="has no probabilities output \\(its outputs: labels\\)"):
            cls(path, device="cpu")
