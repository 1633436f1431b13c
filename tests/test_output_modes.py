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


MODE_TOLERANCE = {"probs": 0.0, "roi_logits": 1e-4, "target": 0.02, "labels": 0.03}
"""Largest difference of evaluate's mean target IoU from the probs model's, by the output the masks come
from: roi_logits is pasted here as in the graph; target lacks the non-target class; labels are resized
as one-hot maps."""


@pytest.mark.parametrize("mode", ["roi_logits", "target", "labels"])
def test_every_output_mode_gives_masks_close_to_probs(mode, work, stand_in_full, ckpt, all_modes):
    from roiseg.runtime.session import FusedSession

    single = FusedSession(fused_once(work, stand_in_full, ckpt, outputs=(mode,)), device="cpu")
    probs = FusedSession(all_modes, device="cpu")
    assert single.mask_source == mode and probs.mask_source == "probs"
    image = np.random.default_rng(5).integers(0, 255, (96, 80, 3), dtype=np.uint8)
    rois = np.concatenate([boxes(4, seed=6), [[-0.1, 0.2, 0.4, 1.2]]]).astype(np.float32)
    got, want = (s.roi_probabilities(s.image_feed(image), rois) for s in (single, probs))
    assert got.shape == want.shape
    if mode == "roi_logits":
        np.testing.assert_allclose(got, want, atol=1e-5)
    elif mode == "target":
        np.testing.assert_array_equal(got[:, 1], want[:, 1])
    else:
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize("mode", ["roi_logits", "target", "labels"])
def test_predict_and_evaluate_take_every_output_mode(mode, work, stand_in_full, ckpt, all_modes, coco_tiny, tmp_path):
    from roiseg.evaluation.models import load_mask_model
    from roiseg.evaluation.roi import evaluate
    from roiseg.runtime.predict import predict_image

    path = fused_once(work, stand_in_full, ckpt, outputs=(mode,))
    image = coco_tiny / "images/val2017/000000020992.jpg"
    pred, written = predict_image(path, image, [[60, 30, 250, 320]], out=tmp_path / "o.png", device="cpu")
    ref, _ = predict_image(all_modes, image, [[60, 30, 250, 320]], device="cpu")
    assert written and pred.labels.shape == ref.labels.shape
    assert np.mean(pred.labels == ref.labels) > 0.97
    figures = {}
    for model in (path, all_modes):
        report = evaluate(load_mask_model(model, device="cpu"), coco_tiny / "annotations/instances_val2017.json",
                          coco_tiny / "images/val2017", max_images=3, workers=0, show_progress=False).report
        figures[model] = report
    got, want = figures[path], figures[all_modes]
    assert got["mask_source"] == mode and want["mask_source"] == "probs"
    assert got["num_rois"] == want["num_rois"] > 0
    diff = abs(got["figures"]["target_iou"]["all"]["mean"] - want["figures"]["target_iou"]["all"]["mean"])
    assert diff <= MODE_TOLERANCE[mode], (mode, diff)


@pytest.mark.slow
def test_a_compact_raw_float16_instance_model_runs_through_every_command(yolox_nano, yolox_checkpoint, coco_tiny,
                                                                           instance_model, tmp_path):
    """The hardest cell of the matrix: YOLOX-nano instance model, labels + target outputs only, raw-image
    input, float16: predict, evaluate and parity-check take it, and agree with the probs model."""
    from roiseg.evaluation.instances import evaluate_instances
    from roiseg.export.instances import fuse_instances
    from roiseg.runtime.instances import predict_instances
    from roiseg.runtime.session import FusedSession

    photo = coco_tiny / "images/val2017/000000184324.jpg"
    compact = fuse_instances(yolox_nano, yolox_checkpoint, tmp_path / "compact.onnx", outputs=("labels", "target"),
                             image_input="raw", fp16=True, simplify=False, check_images=[photo]).out
    full = instance_model  # the probs instance model of the same checkpoint, tensor input, float32
    got, written = predict_instances(compact, photo, out=tmp_path / "persons.png", device="cpu")
    want, _ = predict_instances(full, photo, device="cpu")
    assert written and len(got.scores) == len(want.scores) > 0
    np.testing.assert_allclose(got.rois_px, want.rois_px, atol=2.0)
    assert np.mean(got.labels == want.labels) > 0.97
    ann, images = coco_tiny / "annotations/instances_val2017.json", coco_tiny / "images/val2017"
    reports = [evaluate_instances(FusedSession(m, "cpu"), ann, images, max_images=3, workers=0, show_progress=False)
               for m in (compact, full)]
    assert reports[0]["mask_source"] == "target" and reports[0]["num_detections"] == reports[1]["num_detections"]
    assert abs(reports[0]["mask_ap"]["AP"] - reports[1]["mask_ap"]["AP"]) < 0.05
    parity = run_parity(yolox_nano, yolox_checkpoint, fused=compact, annotations=ann, images=images, max_images=2)
    assert parity["passed"], format_table(parity)


def test_roi_logits_are_pasted_in_numpy_as_the_graph_pastes_them():
    """runtime.masks.paste_probabilities (numpy, each box's own pixels only) against the head's torch paste
    (every pixel, then the inside mask) on boxes inside, across the border, outside, thinner than a pixel."""
    from roiseg.runtime.masks import paste_probabilities

    hw = (75, 96)
    rois = np.array([[0.1, 0.2, 0.6, 0.9], [-0.3, 0.5, 0.4, 1.4], [1.1, 0.1, 1.3, 0.5], [0.505, 0.5, 0.508, 0.9],
                     [0.0, 0.0, 1.0, 1.0], [0.2, 0.3, 0.2, 0.3], [0.5, 0.5, 0.503, 0.9]], np.float32)
    logits = np.random.default_rng(3).normal(0, 3, (len(rois), 3, 14, 14)).astype(np.float32)
    t_rois = torch.from_numpy(rois)
    want = masks_from_logits(paste_roi_logits(torch.from_numpy(logits), t_rois, hw), roi_inside_masks(t_rois, hw))
    got = paste_probabilities(logits, rois, hw)
    assert got.shape == (len(rois), 3, *hw) and got.dtype == np.float32
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
    for n in (2, 5, 6):  # outside the image, zero-size, thinner than a pixel between two centres: background only
        assert (got[n, 0] == 1).all()
    assert (got[0, 0] < 1).any() and (got[4, 0] < 1).all() and (got[3, 0] < 1).sum() == 0.4 * hw[0]  # one column
    empty = paste_probabilities(np.zeros((0, 3, 14, 14), np.float32), np.zeros((0, 4), np.float32), hw)
    assert empty.shape == (0, 3, *hw) and empty.dtype == np.float32
