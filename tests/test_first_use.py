"""First-use polish: ROI numbers as users type them (negative, normalised), default outputs under
git-ignored folders, progress lines without a terminal, and the README/graph.md statements users need."""

from __future__ import annotations

import functools
import logging
import re
import subprocess
from pathlib import Path

import cv2
import pytest

from roiseg.cli import build_parser, glue_negative_values, main
from roiseg.conventions import DEFAULT_PARITY_REPORT, DEFAULT_PREDICT_OVERLAY
from roiseg.utils.progress import LogProgress

REPO = Path(__file__).resolve().parents[1]
IMAGE = "images/val2017/000000020992.jpg"


@pytest.fixture(scope="module")
def fused(roi_model):
    return roi_model


# --------------------------------------------------------------------------------------------
# predict --roi
# --------------------------------------------------------------------------------------------
def test_negative_roi_coordinates_need_no_equals_sign(fused, coco_tiny, tmp_path, capsys):
    out = tmp_path / "o.png"
    code = main(["predict", "--model", str(fused), "--image", str(coco_tiny / IMAGE), "--roi", "-50,-50,100,100",
                 "--roi", "20,20,200,300", "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "ROI #1 (-50,-50,100,100) extends outside" in captured.err and "clipped to 0,0,100,100" in captured.err
    assert "#1 box 0,0,100,100" in captured.out and "#2 box 20,20,200,300" in captured.out  # numbered from 1
    assert cv2.imread(str(out)) is not None
    assert glue_negative_values(["--roi", "-5,-5,10,10", "--out", "x"]) == ["--roi=-5,-5,10,10", "--out", "x"]


def test_normalised_looking_rois_warn_and_normalized_converts(fused, coco_tiny, tmp_path, capsys):
    h, w = cv2.imread(str(coco_tiny / IMAGE)).shape[:2]
    common = ["predict", "--model", str(fused), "--image", str(coco_tiny / IMAGE), "--roi", "0.1,0.1,0.5,0.5",
              "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "px.png")]) == 0
    captured = capsys.readouterr()
    assert "every --roi coordinate is <= 1" in captured.err and "--normalized" in captured.err
    assert main([*common, "--normalized", "--out", str(tmp_path / "norm.png")]) == 0
    captured = capsys.readouterr()
    assert "--normalized" not in captured.err
    box = ",".join(f"{v:g}" for v in (0.1 * w, 0.1 * h, 0.5 * w, 0.5 * h))
    assert f"#1 box {box}:" in captured.out
    assert int(re.search(r"#1 box [^:]+: target (\d+) px", captured.out).group(1)) > 0


# --------------------------------------------------------------------------------------------
# Default outputs
# --------------------------------------------------------------------------------------------
def _ignored(path: str) -> bool:
    proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
    return proc.returncode == 0


def test_default_outputs_lie_under_ignored_folders():
    parser = build_parser()
    parity = parser.parse_args(["parity-check", "--yolo", "d.onnx", "--head", "h.pth"])
    predict = parser.parse_args(["predict", "--model", "m.onnx", "--image", "i.jpg", "--roi", "1,1,9,9"])
    fuse = parser.parse_args(["fuse", "--yolo", "d.onnx", "--head", "h.pth"])
    analyze = parser.parse_args(["analyze"])
    train_out = "checkpoints/checkpoint_epoch_0001_640x640_5000.pth"
    assert str(parity.report) == DEFAULT_PARITY_REPORT
    assert predict.out is None  # with --image it becomes DEFAULT_PREDICT_OVERLAY (next test); with --source, none
    for path in (DEFAULT_PARITY_REPORT, DEFAULT_PREDICT_OVERLAY, str(fuse.out), str(analyze.out), train_out,
                 "models/evaluate_worst_rois.png", ".cache/features/x.npy", "roiseg_demo/parity.json"):
        assert _ignored(path), path


def test_predict_default_overlay_goes_to_models(fused, coco_tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--model", str(fused), "--image", str(coco_tiny / IMAGE), "--roi", "20,20,200,300",
                 "--device", "cpu"]) == 0
    assert f"wrote {DEFAULT_PREDICT_OVERLAY}" in capsys.readouterr().out
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["models", DEFAULT_PREDICT_OVERLAY]


# --------------------------------------------------------------------------------------------
# Progress without a terminal
# --------------------------------------------------------------------------------------------
def test_log_progress_writes_periodic_lines(monkeypatch, request):
    lines: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("roiseg.progress")
    monkeypatch.setattr(logger, "handlers", [handler])
    request.addfinalizer(functools.partial(logger.setLevel, logger.level))
    logger.setLevel(logging.INFO)  # setLevel (before and after): it clears the loggers' isEnabledFor caches
    now = [0.0]
    bar = LogProgress(range(10), desc="epoch 1/3", unit="step", interval=10.0, clock=lambda: now[0])
    for _ in bar:
        now[0] += 4.0
        bar.set_postfix(loss="0.5000", refresh=False)
    # a line each time 10 s have passed (after steps 3, 6 and 9 of 4 s each), then the closing line
    assert len(lines) == 3 + 1, lines
    assert lines[0] == "epoch 1/3: 3/10 step (30%), 0.25 step/s, ETA 0m28s, loss=0.5000"
    assert lines[-1] == "epoch 1/3: 10/10 step (100%), 0.25 step/s, done in 0m40s, loss=0.5000"


def test_cli_progress_is_plain_lines_when_stderr_is_not_a_terminal(coco_tiny, tmp_path, capsys):
    out = tmp_path / "a.json"
    code = main(["analyze", "--annotations", str(coco_tiny / "annotations/instances_train2017.json"), "--out", str(out),
                 "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0 and out.is_file()
    assert "\r" not in err and "it/s]" not in err  # no tqdm redraws
    assert "[roiseg.progress] analyze: 101/101 ROI (100%)" in err and "done in" in err


# --------------------------------------------------------------------------------------------
# Docs users read first
# --------------------------------------------------------------------------------------------
def test_readme_step_3_and_graph_md_state_what_users_need():
    readme = (REPO / "README.md").read_text()
    step3 = readme[readme.index("3. **Train**"):readme.index("4. **Fuse**")]
    for text in ("--extractor", "--feature-tensor", "instances_train2017_person_only_no_crowd.json", "_500", "_100",
                 "708", "docs/accuracy.md"):
        assert text in step3, text
    graph = (REPO / "docs" / "graph.md").read_text()
    rules = graph[graph.index("### Input rules"):graph.index("### Metadata")]
    for text in ("also none", "outside `[0, 1]`", "non-finite", "Finite images", "NaN"):  # the robust contract
        assert text in rules, text
