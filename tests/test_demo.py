"""The demo pipeline end to end at small sizes: every listed file exists and parity holds."""

import json
import math
from pathlib import Path

import pytest

from roiseg.conventions import METRICS_FILE
from roiseg.demo import DemoConfig, run_demo


@pytest.mark.slow
def test_demo_small_end_to_end(tmp_path):
    cfg = DemoConfig(workdir=tmp_path / "demo", epochs=1, n_train=6, n_val=3, input_hw=(128, 128),
                     channels=32, hidden=32, latency_reps=2)
    summary = run_demo(cfg)
    for name, path in summary.files.items():
        assert Path(path).exists(), f"{name}: {path} missing"
    n = summary.numbers
    assert n["parity_passed"] and n["parity_max_abs"] <= 1e-4 and n["parity_argmax_agreement"] >= 0.9999
    # The summary reports what training measured (the last record of metrics.jsonl), not a number of its own.
    records = [json.loads(line) for line in (Path(summary.files["checkpoints"]) / METRICS_FILE).read_text().splitlines()]
    assert n["mean_roi_target_iou"] == records[-1]["mean_roi_target_iou"]
    assert n["box_baseline_roi_target_iou"] == records[-1]["box_baseline_roi_target_iou"]
    assert math.isfinite(n["latency_ms_n8"]) and n["latency_ms_n8"] > 0
    saved = json.loads((cfg.workdir / "demo_summary.json").read_text())
    assert saved["files"] == summary.files
    assert "roiseg demo: done" in "\n".join(summary.lines())
