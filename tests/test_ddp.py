"""DistributedDataParallel: ``torchrun --nproc_per_node 2 -m roiseg train`` on CPU with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers_train import make_person_data, tiny_overrides
from roiseg.training.checkpoint import find_checkpoints, find_latest, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def _toml(v) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)


@pytest.mark.slow
def test_two_gloo_processes_train_and_reduce_validation_over_both_shards(tmp_path: Path, stand_in_full):
    data = make_person_data(tmp_path / "data", n_train=8, n_val=6)  # 5 val images after the crowd drop: shards of 3 and 2
    out = tmp_path / "run"
    items = tiny_overrides(data, stand_in_full, out, train__epochs=2, features__cache=str(tmp_path / "cache"))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "roiseg", "train"]
    argv += [a for k, v in items.items() for a in ("--set", f"{k}={_toml(v)}")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "backend gloo" in proc.stderr and "rank 1/2" in proc.stderr

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]  # one record per epoch: only rank 0 writes
    assert [p.name for p in find_checkpoints(out)] == [r["checkpoint"] for r in records]
    assert not list(out.glob(".*.tmp"))

    val = json.loads((data / "annotations" / "instances_val2017_person_only_no_crowd.json").read_text())
    assert records[-1]["num_rois"] == len(val["annotations"])  # both ranks' shards were summed
    assert proc.stdout.count("run folder:") == 1  # only rank 0 prints the summary

    # The metrics reduced over the two ranks equal a single-process validation of the saved head.
    from roiseg.training.distributed import DistContext
    from roiseg.training.engine import Trainer
    from roiseg.training.run_state import resolve_run_config

    cfg, path = resolve_run_config(None, {"train.picture": False}, resume=str(out))
    single = Trainer.build(cfg, DistContext(), path).validate()
    state = load_checkpoint(find_latest(out))
    for key in ("miou", "iou_target", "iou_non_target", "iou_background", "mean_roi_target_iou",
                "box_baseline_roi_target_iou", "num_rois"):
        assert single[key] == pytest.approx(state["metrics"][key], rel=1e-6, abs=1e-9), key
