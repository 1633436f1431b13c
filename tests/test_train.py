"""Training: schedule, sharding, ROI sampling, checkpoint helpers, and a short real run on generated data."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers_train import make_person_data, tiny_overrides
from roiseg.errors import InputError
from roiseg.training.checkpoint import (
    checkpoint_epoch,
    find_checkpoints,
    find_latest,
    load_checkpoint,
    load_head,
    prune_checkpoints,
    record_best,
    resolve_resume,
)
from roiseg.training.distributed import ShardSampler
from roiseg.training.optim import lr_factor
from roiseg.training.run_state import check_resumable
from roiseg.training.step import sample_rois

TIMING_KEYS = {"epoch_time_s", "train_time_s", "val_time_s", "rois_per_s"}


# --------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------
def test_lr_factor_warms_up_linearly_then_follows_a_cosine():
    warm, total, start, floor = 10, 110, 0.1, 0.05
    assert lr_factor(0, warm, total, start, floor) == pytest.approx(start)
    assert lr_factor(5, warm, total, start, floor) == pytest.approx(start + (1 - start) * 0.5)
    assert lr_factor(10, warm, total, start, floor) == pytest.approx(1.0)
    assert lr_factor(60, warm, total, start, floor) == pytest.approx(floor + (1 - floor) * 0.5)  # half-way: cos = 0
    assert lr_factor(110, warm, total, start, floor) == pytest.approx(floor)
    assert lr_factor(500, warm, total, start, floor) == pytest.approx(floor)
    values = [lr_factor(s, warm, total, start, floor) for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_factor(0, 0, 10, start, floor) == pytest.approx(1.0)  # no warm-up


def test_sample_rois_keeps_all_below_the_cap_and_is_deterministic_above():
    assert sample_rois(5, 8, seed=1) is None
    a, b, c = sample_rois(50, 8, seed=1), sample_rois(50, 8, seed=1), sample_rois(50, 8, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a) == 8 and len(set(a.tolist())) == 8 and a.tolist() == sorted(a.tolist())
    assert 0 <= int(a.min()) and int(a.max()) < 50


@pytest.mark.parametrize("n, world", [(10, 2), (7, 2), (7, 3), (1, 2)])
def test_shard_sampler_covers_every_item_once_per_epoch(n: int, world: int):
    shards = [ShardSampler(n, r, world, shuffle=True, seed=3, pad=True) for r in range(world)]
    for s in shards:
        s.set_epoch(4)
    lists = [list(s) for s in shards]
    assert len({len(x) for x in lists}) == 1 and len(lists[0]) == len(shards[0]) == math.ceil(n / world)
    assert set().union(*map(set, lists)) == set(range(n))
    unpadded = [list(ShardSampler(n, r, world, shuffle=False, pad=False)) for r in range(world)]
    assert sorted(sum(unpadded, [])) == list(range(n))  # validation: every item exactly once


def test_shard_sampler_order_depends_on_seed_plus_epoch_only():
    def order(seed: int, epoch: int) -> list[int]:
        s = ShardSampler(20, 0, 1, shuffle=True, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(0, 1) == order(0, 1) == order(1, 0)
    assert order(0, 1) != order(0, 2)
    expected = torch.randperm(20, generator=torch.Generator().manual_seed(5)).tolist()
    assert order(2, 3) == expected


def test_shard_sampler_repeats_draw_items_more_often_at_the_same_epoch_length():
    repeats = [2] * 10 + [1] * 30  # the first 10 items (a quarter) enter the pool twice
    counts = np.zeros(40)
    for epoch in range(200):
        shards = [ShardSampler(40, r, 2, shuffle=True, seed=1, repeats=repeats) for r in range(2)]
        for s in shards:
            s.set_epoch(epoch)
        order = sum((list(s) for s in shards), [])
        assert len(order) == 40 and len(shards[0]) == 20
        counts += np.bincount(order, minlength=40)
    ratio = counts[:10].mean() / counts[10:].mean()
    assert 1.8 < ratio < 2.2, ratio  # 2 by construction: each pool entry is equally likely to be kept
    plain = ShardSampler(40, 0, 1, seed=1, repeats=[1] * 40)
    assert list(plain) == list(ShardSampler(40, 0, 1, seed=1))  # all 1: the plain permutation
    with pytest.raises(ValueError, match="repeats"):
        ShardSampler(40, 0, 1, repeats=[0] * 40)


# --------------------------------------------------------------------------------------------
# Checkpoint folder helpers
# --------------------------------------------------------------------------------------------
def _fake(folder: Path, name: str, payload: bytes = b"x") -> Path:
    p = folder / name
    p.write_bytes(payload)
    return p


def test_find_prune_and_best(tmp_path: Path):
    names = [f"checkpoint_epoch_{e:04d}_64x64_{m:04d}.pth" for e, m in ((1, 10), (2, 900), (10, 5), (3, 20))]
    for i, n in enumerate(names):
        _fake(tmp_path, n, bytes([i]))
    _fake(tmp_path, ".checkpoint_epoch_0011_64x64_0001.pth.abc.tmp")  # a temp file left by a kill
    _fake(tmp_path, "best.pth")
    assert [checkpoint_epoch(p) for p in find_checkpoints(tmp_path)] == [1, 2, 3, 10]
    assert find_latest(tmp_path).name == names[2]
    assert resolve_resume("", tmp_path) == find_latest(tmp_path)
    assert resolve_resume(tmp_path / names[0], tmp_path) == tmp_path / names[0]

    best = record_best(tmp_path / names[1])
    assert best == tmp_path / "best.pth" and best.read_bytes() == bytes([1])
    removed = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == sorted([names[0], names[1]])
    assert [p.name for p in find_checkpoints(tmp_path)] == [names[3], names[2]]
    assert best.read_bytes() == bytes([1])  # best survives pruning of its epoch file
    assert prune_checkpoints(tmp_path, keep=0) == []


def test_resume_target_errors(tmp_path: Path):
    with pytest.raises(InputError, match="no checkpoint_epoch"):
        resolve_resume("", tmp_path)
    with pytest.raises(InputError, match="not found"):
        resolve_resume(tmp_path / "nope.pth", tmp_path)


def test_resume_check_rejects_other_channels_other_extractor_and_other_head():
    from roiseg.features.extractor import ExtractorInfo
    from roiseg.modeling import HeadConfig

    info = ExtractorInfo(path="det.onnx", sha256="a" * 64, feature_tensor="t", input_name="images", input_hw=(64, 64),
                         channels=32, feature_hw=(8, 8), stride=8, opset=17, preprocessing="{}")
    head = HeadConfig(in_channels=32, stride=8, input_hw=(64, 64))
    state = {"extractor": info.to_dict(), "head_config": head.to_dict()}
    check_resumable(state, head, info, "ck.pth")
    older = {k: v for k, v in head.to_dict().items() if k not in ("extra_channels", "embed_dim")}
    check_resumable({**state, "head_config": older}, head, info, "ck.pth")  # fields added since take their defaults
    with pytest.raises(InputError, match=r"ck\.pth.*64 feature channels"):
        check_resumable({**state, "head_config": {**head.to_dict(), "in_channels": 64}}, head, info, "ck.pth")
    other = {**info.to_dict(), "sha256": "b" * 64}
    with pytest.raises(InputError, match=r"ck\.pth.*sha256"):
        check_resumable({**state, "extractor": other}, head, info, "ck.pth")
    with pytest.raises(InputError, match=r"ck\.pth.*input \[32, 32\]"):
        check_resumable({**state, "head_config": {"in_channels": 32}, "extractor": {**info.to_dict(), "input_hw": [32, 32]}},
                        head, info, "ck.pth")
    with pytest.raises(InputError, match=r"ck\.pth.*tensor 'u'"):
        check_resumable({**state, "extractor": {**info.to_dict(), "feature_tensor": "u"}}, head, info, "ck.pth")
    with pytest.raises(InputError, match=r"ck\.pth.*hidden 256 -> 16"):
        check_resumable(state, HeadConfig(in_channels=32, stride=8, input_hw=(64, 64), hidden=16), info, "ck.pth")


def test_resume_reads_the_legacy_feature_tensor_key_of_an_old_checkpoint_config(tmp_path: Path):
    from roiseg.training.checkpoint import save_checkpoint
    from roiseg.training.config import TrainConfig
    from roiseg.training.run_state import resolve_run_config

    old = TrainConfig().to_dict()
    old["features"] = {"extractor": "det.onnx", "tensor": "input.663", "cache": "none"}  # written before the rename
    path = save_checkpoint(tmp_path / "checkpoint_epoch_0001_64x64_0000.pth",
                           {"epoch": 1, "head_config": {}, "model": {}, "extractor": {"tensor": "input.663"}, "config": old})
    cfg, resumed = resolve_run_config(None, None, resume=str(tmp_path))
    assert resumed == path and cfg.features.feature_tensor == "input.663" and cfg.train.out == str(tmp_path)


# --------------------------------------------------------------------------------------------
# A short real run: 3 epochs on generated data with the stand-in detector
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory, stand_in_full):
    from roiseg.training.config import load_config
    from roiseg.training.engine import train

    root = tmp_path_factory.mktemp("train_run")
    data = make_person_data(root / "data", n_train=8, n_val=4)
    out = root / "run"
    # hflip 1.0: every train image mirrored every epoch, and crowded_repeat 1: every train image drawn every epoch,
    # so from epoch 2 on every entry (plain val, mirrored train) is in the cache; with 0 < hflip < 1 a mirrored
    # entry, and with crowded_repeat > 1 an image not drawn yet, is computed the first time it is drawn.
    cfg = load_config(None, tiny_overrides(data, stand_in_full, out, train__epochs=3, features__cache=str(root / "cache"),
                                           head__variant="detail", data__hflip=1.0, data__crowded_repeat=1))
    summary = train(cfg)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"out": out, "summary": summary, "records": records, "extractor": stand_in_full, "data": data}


def test_run_writes_a_checkpoint_per_epoch_named_by_input_size_and_miou(trained):
    out, records = trained["out"], trained["records"]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    ckpts = find_checkpoints(out)
    assert len(ckpts) == 3
    for r, path in zip(records, ckpts):
        m = int(math.floor(round(r["miou"] * 10000, 6)))
        assert path.name == f"checkpoint_epoch_{r['epoch']:04d}_128x128_{m:04d}.pth"
        assert r["checkpoint"] == path.name
    best = max(records, key=lambda r: r["miou"])
    assert (out / "best.pth").read_bytes() == (out / best["checkpoint"]).read_bytes()


def test_checkpoint_holds_weights_states_config_extractor_and_metrics(trained):
    out, records = trained["out"], trained["records"]
    path = find_latest(out)
    state = load_checkpoint(path)
    for key in ("format", "roiseg_version", "epoch", "head_config", "model", "extractor", "metrics", "config",
                "optimizer", "scheduler", "scaler", "rng"):
        assert key in state, key
    assert state["epoch"] == 3 and state["metrics"] == records[-1]
    ext = state["extractor"]
    assert ext["sha256"] == hashlib.sha256(Path(trained["extractor"]).read_bytes()).hexdigest()
    assert (ext["channels"], ext["stride"], list(ext["input_hw"])) == (32, 8, [128, 128])
    assert ext["feature_tensor"] == "/model.34/Concat_output_0" and json.loads(ext["preprocessing"])["color"] == "rgb"
    assert state["config"]["train"]["epochs"] == 3 and state["config"]["head"]["variant"] == "detail"
    assert len(state["config"]["loss"]["class_weights"]) == 3  # resolved weights are stored for resume
    assert state["scheduler"]["last_epoch"] == 3 * records[-1]["train_steps"]
    head, _ = load_head(path)
    assert not head.training and head.cfg.variant == "detail" and head.cfg.in_channels == 32


def test_epoch_records_hold_validation_metrics_and_pictures_are_written(trained):
    out, records = trained["out"], trained["records"]
    for r in records:
        for key in ("train_loss", "val_loss", "miou", "iou_target", "iou_non_target", "mean_roi_target_iou",
                    "roi_target_iou_large", "box_baseline_roi_target_iou", "lr"):
            assert key in r, key
        assert r["num_rois"] > 0 and 0.0 <= r["miou"] <= 1.0
        picture = cv2.imread(str(out / f"validation_all_images_epoch_{r['epoch']:04d}.png"))
        assert picture is not None and picture.shape[0] > 0
    assert cv2.imread(str(out / "curves.png")) is not None
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_second_epoch_reads_every_feature_from_the_cache(trained):
    first, second, third = trained["records"]
    assert first["feature_cache_misses"] > 0 and first["extractor_calls"] > 0
    assert second["extractor_calls"] == 0 and second["feature_cache_misses"] == 0
    assert third["extractor_calls"] == 0 and second["feature_cache_hits"] > 0


def test_training_loss_decreases(trained):
    # The val loss is over the same pixels every epoch; the train loss is over importance-sampled points
    # (the head's least certain ones), which get harder as it learns, so only its finiteness is checked.
    val = [r["val_loss"] for r in trained["records"]]
    assert all(b < a for a, b in zip(val, val[1:])), val
    assert all(np.isfinite(r["train_loss"]) for r in trained["records"])


def test_keep_prunes_older_checkpoints_but_not_best(trained, tmp_path):
    from roiseg.training.config import load_config
    from roiseg.training.engine import train

    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(trained["data"], trained["extractor"], out, train__epochs=2, train__keep=1,
                                           train__picture=False))
    summary = train(cfg)
    ckpts = find_checkpoints(out)
    assert [checkpoint_epoch(p) for p in ckpts] == [2]
    assert (out / "best.pth").is_file()
    assert load_checkpoint(out / "best.pth")["epoch"] == summary["best"]["epoch"]
    assert np.isfinite(summary["history"][-1]["train_loss"])
