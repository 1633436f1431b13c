"""``roiseg evaluate`` end to end: fused model and checkpoint give the same figures; bad input is one line, exit 2."""

from __future__ import annotations

import json

import pytest
from helpers_graph import fused_once, make_checkpoint

from roiseg.cli import main

VAL_JSON = "annotations/instances_val2017.json"
VAL_IMAGES = "images/val2017"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("evaluate_cli")


@pytest.fixture(scope="module")
def built(work, stand_in_full):
    ckpt = make_checkpoint(work / "head.pth", stand_in_full)
    return ckpt, fused_once(work, stand_in_full, ckpt)


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
