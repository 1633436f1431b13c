"""Resume: 2 epochs == 1 epoch + --resume + 1 epoch exactly; a SIGKILL mid-run loses at most that epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers_train import make_person_data, tiny_overrides
from roiseg.training.checkpoint import find_checkpoints, find_latest, load_checkpoint
from roiseg.training.config import load_config
from roiseg.training.engine import train
from roiseg.training.run_state import resolve_run_config

# timings, and onnxruntime runs (a fresh extractor checks batching once: its first batch runs one by one too)
VOLATILE = {"epoch_time_s", "train_time_s", "val_time_s", "rois_per_s", "extractor_calls"}
REPO = Path(__file__).resolve().parents[1]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_person_data(tmp_path_factory.mktemp("resume") / "data", n_train=10, n_val=4)


def test_two_epochs_equal_one_plus_resume_plus_one(data, stand_in_full, tmp_path):
    # jitter and a ROI cap below the ROIs of a batch exercise the per-epoch jitter and ROI-sampling streams
    extra = {"data__jitter": 0.1, "data__max_rois_per_step": 5, "head__variant": "detail", "train__picture": False}
    full = train(load_config(None, tiny_overrides(data, stand_in_full, tmp_path / "a", **extra)))

    first = train(load_config(None, tiny_overrides(data, stand_in_full, tmp_path / "b", train__stop_after=1, **extra)))
    assert first["last_epoch"] == 1 and len(find_checkpoints(tmp_path / "b")) == 1
    cfg, path = resolve_run_config(None, None, resume=str(tmp_path / "b"))
    assert path == find_latest(tmp_path / "b") and cfg.train.stop_after == 0 and cfg.train.out == str(tmp_path / "b")
    resumed = train(cfg, path)
    assert resumed["last_epoch"] == 2 and [r["epoch"] for r in resumed["history"]] == [2]

    a, b = _records(tmp_path / "a"), _records(tmp_path / "b")
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2]
    assert [_stable(r) for r in a] == [_stable(r) for r in b]
    assert full["best"] == resumed["best"]

    sa, sb = load_checkpoint(find_latest(tmp_path / "a")), load_checkpoint(find_latest(tmp_path / "b"))
    assert find_latest(tmp_path / "a").name == find_latest(tmp_path / "b").name
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert sa["scheduler"]["last_epoch"] == sb["scheduler"]["last_epoch"]
    for pid, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], sb["optimizer"]["state"][pid]["exp_avg_sq"])


def test_resume_from_a_file_continues_with_more_epochs(data, stand_in_full, tmp_path):
    out = tmp_path / "run"
    train(load_config(None, tiny_overrides(data, stand_in_full, out, train__epochs=1, train__picture=False)))
    cfg, path = resolve_run_config(None, {"train.epochs": 2}, resume=str(find_latest(out)))
    summary = train(cfg, path)
    assert [r["epoch"] for r in summary["history"]] == [2]
    assert [r["epoch"] for r in _records(out)] == [1, 2]
    # nothing left to do: a resume at the last epoch runs no epoch and keeps the files
    cfg, path = resolve_run_config(None, None, resume=str(out))
    assert train(cfg, path)["history"] == []
    assert len(find_checkpoints(out)) == 2


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(data, stand_in_full, tmp_path):
    """Kill -9 the CLI after epoch 1 is saved; every checkpoint still loads; --resume finishes the run."""
    out = tmp_path / "run"
    items = tiny_overrides(data, stand_in_full, out, train__epochs=3, features__cache=str(tmp_path / "cache"))
    argv = [sys.executable, "-m", "roiseg", "train"] + [a for k, v in items.items() for a in ("--set", f"{k}={_toml(v)}")]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not (out / "metrics.jsonl").is_file():  # written right after the epoch-1 checkpoint
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "epoch 1 did not finish in time"
            time.sleep(0.05)
        time.sleep(0.2)  # into epoch 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    saved = find_checkpoints(out)
    assert saved and all(load_checkpoint(p)["epoch"] >= 1 for p in saved)
    for p in out.glob("*.pth"):
        load_checkpoint(p)  # no truncated checkpoint (best.pth included)
    done = max(load_checkpoint(p)["epoch"] for p in saved)
    assert done < 3, "the run finished before it could be killed"

    cfg, path = resolve_run_config(None, None, resume=str(out))
    summary = train(cfg, path)
    assert summary["last_epoch"] == 3 and summary["history"][0]["epoch"] == done + 1
    assert [r["epoch"] for r in _records(out)] == [1, 2, 3]
    assert [load_checkpoint(p)["epoch"] for p in find_checkpoints(out)] == [1, 2, 3]


def _toml(v) -> str:
    return json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)


def test_a_checkpoint_made_before_a_head_field_resumes_as_it_was_built(data, stand_in_full, tmp_path):
    # a query head trained before the person map existed: its stored configs lack the key
    out = tmp_path / "run"
    over = tiny_overrides(data, stand_in_full, out, head__variant="query", head__person_aux=False, train__epochs=1,
                          train__picture=False)
    train(load_config(None, over))
    path = find_latest(out)
    state = torch.load(path, weights_only=False)
    del state["config"]["head"]["person_aux"], state["head_config"]["person_aux"]
    torch.save(state, path)
    cfg, resumed_from = resolve_run_config(None, {"train.epochs": 2}, resume=str(out))
    assert cfg.head.person_aux is False  # the value the head was built with, not today's default
    assert [r["epoch"] for r in train(cfg, resumed_from)["history"]] == [2]
    assert not any(k.startswith("person.") for k in load_checkpoint(find_latest(out))["model"])
