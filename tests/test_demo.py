"""The demo pipeline end to end at small sizes: every listed file exists and parity holds."""

import json
import math
from pathlib import Path

import pytest

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
    assert 0.0 <= n["mean_roi_target_iou"] <= 1.0 and math.isfinite(n["latency_ms_n8"])
    saved = json.loads((cfg.workdir / "demo_summary.json").read_text())
    assert saved["files"] == summary.files
    assert "roiseg demo: done" in "\n".join(summary.lines())
