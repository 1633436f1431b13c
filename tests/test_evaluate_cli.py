"""``roiseg evaluate`` end to end: fused model and checkpoint give the same figures; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest
from helpers_graph import fused_once

from roiseg.cli import main

VAL_JSON = "annotations/instances_val2017.json"
VAL_IMAGES = "images/val2017"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluate_cli")


@pytest.fixture(scope="module")
def built(work, stand_in_full, stand_in_checkpoint):
    return stand_in_checkpoint, fused_once(work, stand_in_full, stand_in_checkpoint)


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def test_fused_model_and_checkpoint_give_the_same_figures(built, stand_in_full, coco_tiny, work, capsys):
    ckpt, fused = built
    common = ["--annotations", str(coco_tiny / VAL_JSON), "--images", str(coco_tiny / VAL_IMAGES), "--max-images", "3"]
    onnx_report, torch_report, md = work / "onnx.json", work / "torch.json", work / "onnx.md"
    assert main(["evaluate", "--model", str(fused), *common, "--report", str(onnx_report), "--markdown", str(md),
                 "--worst", "2", "--worst-picture", str(work / "worst.png")]) == 0
    printed = capsys.readouterr().out
    assert "target IoU" in printed and "whole-box floor IoU" in printed and "mask AP" in printed
    assert (work / "worst.png").stat().st_size > 0 and "target IoU" in md.read_text()
    assert main(["evaluate", "--model", str(ckpt), "--extractor", str(stand_in_full), *common,
                 "--report", str(torch_report)]) == 0
    a, b = json.loads(onnx_report.read_text()), json.loads(torch_report.read_text())
    assert a["num_rois"] == b["num_rois"] > 0 and a["images"]["evaluated"] == 3
    for name in ("target_iou", "box_floor_target_iou", "target_boundary_iou"):
        assert a["figures"][name]["all"]["mean"] == pytest.approx(b["figures"][name]["all"]["mean"], abs=1e-3), name
    assert a["figures"]["box_floor_target_iou"] == b["figures"]["box_floor_target_iou"]  # no model involved


@pytest.mark.parametrize("case", ["not fused", "checkpoint without detector", "report is a folder", "zero images"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, built, yolox_nano, coco_tiny, work, capsys):
    ckpt, fused = built
    report = work / f"bad_{case.replace(' ', '_')}.json"
    args = {"not fused": ["--model", str(yolox_nano)], "checkpoint without detector": ["--model", str(ckpt)],
            "report is a folder": ["--model", str(fused)], "zero images": ["--model", str(fused), "--max-images", "0"]}
    expected = {"not fused": "not a roiseg fused model", "checkpoint without detector": "needs the detector ONNX",
                "report is a folder": "is a folder", "zero images": "--max-images must be >= 1"}
    if case == "report is a folder":
        report.mkdir()
    code = main(["evaluate", *args[case], "--annotations", str(coco_tiny / VAL_JSON),
                 "--images", str(coco_tiny / VAL_IMAGES), "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 2 and len(_errors(err)) == 1 and expected[case] in _errors(err)[0], err
    assert "Traceback" not in err
    assert report.is_dir() if case == "report is a folder" else not report.exists()


def test_crowd_regions_ignore_the_detections_on_them():
    """COCO's crowd rule: a detection on an iscrowd region is neither a true nor a false positive."""
    import numpy as np
    from pycocotools import mask as mask_utils

    from roiseg.metrics.coco_ap import coco_mask_ap, instance_result

    person, crowd = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    person[5:20, 5:15], crowd[25:38, 20:38] = True, True
    rle = lambda m: mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))  # noqa: E731
    gt = [{"id": 1, "image_id": 7, "segmentation": rle(person), "area": 150.0, "bbox": [5, 5, 10, 15]},
          {"id": 2, "image_id": 7, "segmentation": rle(crowd), "area": 234.0, "bbox": [20, 25, 18, 13], "iscrowd": 1}]
    dets = [instance_result(7, crowd, 0.95), instance_result(7, person, 0.9)]
    images = [{"id": 7, "height": 40, "width": 40}]
    assert coco_mask_ap(images, gt, dets)["AP"] == pytest.approx(1.0)
    assert coco_mask_ap(images, [gt[0], {**gt[1], "iscrowd": 0}], dets)["AP50"] == pytest.approx(1.0)  # both found
    assert coco_mask_ap(images, gt[:1], dets)["AP"] < 0.9  # without the crowd region it is a false positive


def test_instance_model_is_scored_with_its_own_detections(instance_model, built, coco_tiny, work, capsys):
    """yolox_nano instance model on the first 3 coco-tiny val images (one with a crowd region, one without persons)."""
    report, md = work / "instances.json", work / "instances.md"
    common = ["--annotations", str(coco_tiny / VAL_JSON), "--images", str(coco_tiny / VAL_IMAGES), "--max-images", "3"]
    assert main(["evaluate", "--model", str(instance_model), "--rois", "detector", *common, "--report", str(report),
                 "--markdown", str(md), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    got = json.loads(report.read_text())
    assert got["protocol"] == "instances" and got["images"]["evaluated"] == 3
    assert all(0.0 <= got["mask_ap"][k] <= 1.0 for k in ("AP", "AP50", "AP75"))
    assert got["num_crowd_regions"] == 1 and got["num_persons"] >= 14
    counts = {r["file_name"]: r["detections"] for r in got["per_image"]}
    assert counts["000000454661.jpg"] == 0 and counts["000000184324.jpg"] > 0
    assert got["num_detections"] == sum(counts.values()) > 0
    assert "mask AP with the model's own detections" in printed and f"{got['num_detections']} detections" in printed
    assert "| AP | AP50 |" in md.read_text()
    # the metadata chooses the mode: without --rois an instance model is scored with its detections too
    auto = work / "instances_auto.json"
    assert main(["evaluate", "--model", str(instance_model), *common, "--report", str(auto), "--device", "cpu"]) == 0
    assert "mask AP with the model's own detections" in capsys.readouterr().out
    again = json.loads(auto.read_text())
    assert again["mask_ap"] == got["mask_ap"] and again["per_image"] == got["per_image"]
    from roiseg.errors import InputError
    from roiseg.evaluation.models import load_mask_model

    with pytest.raises(InputError, match="is an instance model: it finds its own boxes"):
        load_mask_model(instance_model, device="cpu")  # the library refuses it on the ground-truth boxes too
    # what each mode cannot do: one line, exit 2
    ckpt, fused = built
    for args, expected in ((["--model", str(instance_model), "--rois", "gt"], "evaluate it without --rois gt"),
                           (["--model", str(fused), "--rois", "detector"], "is a ROI model"),
                           (["--model", str(instance_model), "--rois", "detector", "--worst", "2"], "--worst")):
        assert main(["evaluate", *args, *common]) == 2
        assert expected in _errors(capsys.readouterr().err)[0]
