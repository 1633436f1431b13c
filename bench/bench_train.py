"""Training cost at the reference shapes: an epoch with a warm feature cache vs with extraction,
and the throughput (ROIs/s) of the head's train step.

Builds the stand-in detector at the reference shapes (1024 channels, 640x640 input, features
[1, 1024, 80, 80] at ``/model.34/Concat_output_0``) and a few generated COCO person images, then:

1. times one training epoch (:meth:`Trainer.train_one_epoch`) with ``--cache none`` (the extractor
   runs for every batch) and one with a warm cache (filled by a previous pass), and inside each the
   time spent getting features (``Trainer.features``, passed to the epoch as a timed feature source);
2. times the training step alone (:func:`roiseg.training.step.train_step` on features + ROIs +
   images in memory: forward, paste to 640x640, loss, backward, clipping, AdamW and schedule step)
   for the configured head, median over ``--reps``.

    uv run python bench/bench_train.py [--images 8] [--rois 8] [--reps 5] [--device auto]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from roiseg.data.prepare import prepare_coco
from roiseg.synthetic.coco import write_synthetic_coco
from roiseg.synthetic.detector import build_stand_in_detector
from roiseg.training.config import load_config
from roiseg.training.distributed import init_distributed
from roiseg.training.engine import Trainer
from roiseg.training.step import train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_data(root: Path, n_images: int) -> Path:
    report = write_synthetic_coco(root, n_images + 1, 2, image_hw=(480, 640), seed=0, persons=(2, 3))
    for split in ("train2017", "val2017"):
        prepare_coco(report["annotations"][split], root / "annotations")
    return root


def timed_epoch(trainer: Trainer, epoch: int) -> tuple[float, float, int]:
    """(epoch seconds, seconds inside Trainer.features, ROIs trained) of one training epoch."""
    spent = [0.0]

    def timed_features(batch):
        _sync(trainer.device)
        t0 = time.perf_counter()
        out = trainer.features(batch)
        _sync(trainer.device)
        spent[0] += time.perf_counter() - t0
        return out

    t0 = time.perf_counter()
    record = trainer.train_one_epoch(epoch, features=timed_features)
    _sync(trainer.device)
    return time.perf_counter() - t0, spent[0], record["train_rois"]


def head_step_rois_per_s(trainer: Trainer, n_rois: int, reps: int) -> list[float]:
    """ROIs/s of ``reps`` train steps on one fixed batch (features from the cache, ``n_rois`` ROIs)."""
    batch = next(iter(trainer.train_loader)).to(trainer.device)
    feats = trainer.features(batch)
    idx = torch.arange(n_rois, device=trainer.device) % len(batch.rois)
    rois, bidx, targets = batch.rois[idx], batch.batch_idx[idx], batch.targets[idx]
    rates = []
    for i in range(reps + 1):
        _sync(trainer.device)
        t0 = time.perf_counter()
        train_step(trainer.step, feats, batch.images, rois, bidx, targets)
        _sync(trainer.device)
        if i:  # the first step is a warm-up
            rates.append(n_rois / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="training images (generated, 480x640)")
    ap.add_argument("--rois", type=int, default=8, help="ROIs per step in the head-step timing")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variant", default="detail")
    ap.add_argument("--hidden", type=int, default=256)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="roiseg_bench_train_") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        detector = build_stand_in_detector(root / "stand_in.onnx", channels=1024, input_hw=(640, 640), mode="full")
        data = make_data(root / "data", args.images)
        print(f"setup (stand-in 1024ch 640x640, {args.images} images): {time.perf_counter() - t0:.1f} s")
        common = {
            "data.root": str(data), "data.analyze_json": str(root / "none.json"), "data.num_workers": 0,
            "data.batch_size": 2, "data.max_rois_per_step": args.rois, "loss.class_weights": [1.0, 1.0, 1.0],
            "features.extractor": str(detector), "train.device": args.device, "train.picture": False,
            "head.variant": args.variant, "head.hidden": args.hidden, "train.epochs": 4,
        }
        ctx = init_distributed(args.device)
        runs = {}
        for name, cache in (("extraction (--cache none)", "none"), ("warm cache", str(root / "cache"))):
            cfg = load_config(None, {**common, "features.cache": cache, "train.out": str(root / name.split()[0])})
            trainer = Trainer.build(cfg, ctx)
            if cache != "none":
                trainer.train_one_epoch(1)  # fills the cache
            trainer.train_one_epoch(2)  # warm-up of the same kind (allocator, threads)
            runs[name] = timed_epoch(trainer, 3)
            print(f"{name}: epoch {runs[name][0]:.2f} s, of which features {runs[name][1]:.2f} s, "
                  f"{runs[name][2]} ROIs, extractor calls so far {trainer.extractor.calls}")
        (e_none, f_none, _), (e_warm, f_warm, _) = runs.values()
        print(f"epoch time warm cache / extraction: {e_warm / e_none:.3f}x; feature time: {f_warm / f_none:.3f}x "
              f"({f_none / args.images * 1e3:.0f} -> {f_warm / args.images * 1e3:.0f} ms/image)")

        rates = head_step_rois_per_s(trainer, args.rois, args.reps)
        h = trainer.head.cfg
        print(f"head train step ({h.variant}, hidden {h.hidden}, {h.in_channels} ch, {h.input_hw[0]}x{h.input_hw[1]}, "
              f"mask {h.mask_size}, {args.rois} ROIs/step, {trainer.device}): "
              f"ROIs/s per rep {', '.join(f'{r:.2f}' for r in rates)}; median {statistics.median(rates):.2f}")


if __name__ == "__main__":
    main()
