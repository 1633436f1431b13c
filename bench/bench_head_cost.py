"""Per-ROI cost of each head variant at the reference shapes, in the fused model and in training.

Builds the stand-in detector at the reference shapes (1024 channels, 640x640, the five reference
taps) and, per variant (``detail``; ``query`` with the ``auto`` extra taps, without and with the per-ROI
RGB refinement: ``query``, ``hybrid``; ``compare_heads.DEFAULT_VARIANT``, the default, adds the per-ROI local branch,
the neighbour map and the training-only person map), a head with default
sizes and random weights, fuses them (``roiseg fuse``) and times in one process, round-robin:

* ``detector``: the trimmed detector alone (image -> the taps the head reads);
* ``fused 1`` and ``fused N``: the fused model with 1 and N ROIs.

Ratios: fused(1) / detector and the per-extra-ROI cost (fused(N) - fused(1)) / (N - 1) / detector.
Then training steps per variant on random features of the right shapes (``--train-rois`` ROIs,
``train_step`` exactly as ``roiseg train`` runs it): ``detail`` with the full-resolution loss (its
default as head v2's default) and with the point loss (as the head comparison trains it), the query heads
with the point loss (K points per ROI) and, where the head has one, the person map's loss. The steps run
round-robin (``--train-steps`` each, median), once per torch thread count in ``--train-threads`` (default 1
and every core): torchvision's CPU RoIAlign runs on one thread, so the ratio default / detail depends on
the thread count. Printed: training ROIs/s and the ratio default / detail for both of ``detail``'s losses.

    uv run python bench/bench_head_cost.py [--rois 33] [--reps 5] [--size 640] [--channels 1024] [--embed-dim 32]
        [--train-rois 8] [--train-steps 5] [--train-threads 1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

import graph_tools as gt
from roiseg.conventions import DEFAULT_FEATURE_TENSOR
from roiseg.data.analyze import default_workers
from roiseg.export.fuse import fuse
from roiseg.export.probes import plausible_rois, probe_rois, smooth_image
from roiseg.features.extractor import describe_extractor
from roiseg.modeling import HeadConfig, build_head, count_parameters
from roiseg.synthetic.detector import build_stand_in_detector
from roiseg.training.checkpoint import save_checkpoint
from roiseg.training.loss import LossConfig, SegLoss
from roiseg.training.step import StepSetup, train_step

sys.path.insert(0, str(Path(__file__).parent))
import compare_heads as ch  # noqa: E402
from timing import round_robin  # noqa: E402

MEASURED = ("detail", "query", "hybrid", ch.DEFAULT_VARIANT)
VARIANTS = {v: ch.head_overrides(v) for v in MEASURED}
"""Head config overrides per measured variant, as ``compare_heads.py`` defines them (``hybrid``: the query
head with the per-ROI RGB refinement; the default adds the per-ROI local branch, the neighbour map and the
training-only person map)."""
POINTS = {v: 0 if v == "detail" else LossConfig().points for v in MEASURED}
DEFAULT = ch.DEFAULT_VARIANT


def head_config(detector: Path, variant: str, embed_dim: int = 32) -> tuple[HeadConfig, dict]:
    over = {**VARIANTS[variant], "embed_dim": embed_dim}
    extras = "auto" if over["variant"] == "query" else ()
    info = describe_extractor(detector, DEFAULT_FEATURE_TENSOR, extra_tensors=extras)
    cfg = HeadConfig(in_channels=info.channels, stride=info.stride, input_hw=info.input_hw,
                     extra_channels=info.extra_channels, extra_strides=info.extra_strides, **over)
    return cfg, info.to_dict()


def build(root: Path, detector: Path, variant: str, embed_dim: int) -> tuple[Path, Path, HeadConfig]:
    """Fused model and trimmed detector (at every tap the head reads) of one variant."""
    cfg, info = head_config(detector, variant, embed_dim)
    torch.manual_seed(0)
    head = build_head(cfg).eval()
    ckpt = save_checkpoint(root / f"{variant}.pth", {"epoch": 0, "head_config": cfg.to_dict(),
                                                     "model": head.state_dict(), "extractor": info,
                                                     "metrics": {}, "config": {}})
    fused = fuse(detector, ckpt, out=root / f"{variant}.onnx", simplify=False).out
    taps = [DEFAULT_FEATURE_TENSOR, *info["extra_tensors"]]
    trimmed = gt.save_model(gt.trim_at_tensor(gt.load_model(detector), taps), root / f"{variant}_trimmed.onnx")
    return fused, trimmed, cfg


def time_inference(paths: dict[str, tuple[Path, Path]], hw: tuple[int, int], n: int, reps: int) -> dict:
    image = smooth_image(hw, seed=0)
    rois = {k: probe_rois(plausible_rois(min(k, 3)), hw, k)[:k] for k in (1, n)}
    calls = {}
    for variant, (fused, trimmed) in paths.items():
        fs, ts = gt.create_session(fused), gt.create_session(trimmed)
        calls[f"{variant} detector"] = lambda ts=ts: ts.run(None, {"images": image})
        for k in (1, n):
            calls[f"{variant} fused {k}"] = lambda fs=fs, k=k: fs.run(None, {"images": image, "rois": rois[k]})
    return round_robin(calls, reps)


def train_step_call(cfg: HeadConfig, points: int, rois_per_step: int) -> Callable[[], object]:
    """One ``train_step`` per call on random taps (batch of 2 images, ``rois_per_step`` ROIs) with the given loss
    (``points`` per ROI, 0: full resolution); each call draws its points with the next seed."""
    torch.manual_seed(0)
    h, w = cfg.input_hw
    head = build_head(cfg).train()
    taps = [torch.randn(2, cfg.in_channels, h // cfg.stride, w // cfg.stride)]
    taps += [torch.randn(2, c, h // s, w // s) for c, s in zip(cfg.extra_channels, cfg.extra_strides)]
    feats = taps if cfg.num_extra_taps else taps[0]
    images = torch.rand(2, 3, h, w)
    rois = torch.from_numpy(plausible_rois(rois_per_step, seed=1))
    batch_idx = torch.arange(rois_per_step) % 2
    targets = torch.randint(0, 3, (rois_per_step, h, w), dtype=torch.uint8)
    person = torch.randint(0, 2, (2, h, w), dtype=torch.uint8)  # the person map's target, as roiseg train feeds it
    loss = LossConfig()
    setup = StepSetup(model=head, loss_fn=SegLoss(loss), optimizer=torch.optim.AdamW(head.parameters()),
                      scheduler=None, scaler=torch.amp.GradScaler("cuda", enabled=False), input_hw=(h, w),
                      grad_clip=1.0, points=points, person_weight=loss.person_weight if cfg.has_person_map else 0.0)
    seeds = itertools.count()
    return lambda: train_step(setup, feats, images, rois, batch_idx, targets, seed=next(seeds), person=person)


def train_rates(cfgs: dict[str, HeadConfig], rois_per_step: int, steps: int, threads: int) -> dict[str, float]:
    """Training ROIs/s of every variant (with its loss, :data:`POINTS`) and of ``detail`` with the point loss
    (key ``detail-points``), with ``threads`` torch threads: the median step of ``steps`` round-robin steps."""
    torch.set_num_threads(threads)
    calls = {v: train_step_call(cfg, POINTS[v], rois_per_step) for v, cfg in cfgs.items()}
    calls["detail-points"] = train_step_call(cfgs["detail"], LossConfig().points, rois_per_step)
    return {k: rois_per_step / sec for k, sec in round_robin(calls, steps).items()}


def inference_rows(cfgs: dict[str, HeadConfig], med: dict[str, float], n: int) -> dict[str, dict]:
    """Per variant: parameters, the timed medians (ms) and the two ratios to the detector."""
    out: dict[str, dict] = {}
    for v, cfg in cfgs.items():
        det = med[f"{v} detector"]
        out[v] = {
            "parameters": count_parameters(build_head(cfg)),
            "detector_ms": 1000 * det, "fused_1_ms": 1000 * med[f"{v} fused 1"], f"fused_{n}_ms": 1000 * med[f"{v} fused {n}"],
            "fused_1_over_detector": med[f"{v} fused 1"] / det,
            "per_extra_roi_over_detector": (med[f"{v} fused {n}"] - med[f"{v} fused 1"]) / (n - 1) / det,
        }
    return out


def training(cfgs: dict[str, HeadConfig], rois: int, steps: int, threads: list[int]) -> dict[str, dict]:
    """ROIs/s per thread count (:func:`train_rates`) and the default's ratios to ``detail`` with each loss; printed."""
    out: dict[str, dict] = {}
    for t in threads:
        rates = train_rates(cfgs, rois, steps, t)
        ratios = {"detail": rates[DEFAULT] / rates["detail"], "detail-points": rates[DEFAULT] / rates["detail-points"]}
        out[str(t)] = {"rois_per_s": rates, "default_over": ratios}
        listed = "  ".join(f"{k} {r:.2f}" for k, r in rates.items())
        print(f"train ROIs/s, {t} thread(s), median of {steps} round-robin steps ({rois} ROIs on 2 images): {listed}")
        print(f"  {DEFAULT} (points) / detail: {ratios['detail']:.2f} (detail full resolution), "
              f"{ratios['detail-points']:.2f} (detail points)")
    return out


def thread_counts(text: str) -> list[int]:
    """``"1,2"`` -> [1, 2] (sorted, unique); an argparse type: a bad value is a usage error."""
    try:
        counts = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1: {text!r}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rois", type=int, default=33, help="ROIs of the larger fused run")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--train-rois", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=5, help="round-robin training steps per variant (median)")
    ap.add_argument("--train-threads", type=thread_counts, default=f"1,{default_workers()}",
                    help="comma-separated torch thread counts of the training timing (default: 1 and every usable core)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--embed-dim", type=int, default=32, help="query/hybrid embedding width (0: scaled with the detector)")
    args = ap.parse_args()
    hw = (args.size, args.size)
    with tempfile.TemporaryDirectory(prefix="roiseg_bench_head_") as tmp:
        root = Path(tmp)
        detector = build_stand_in_detector(root / "detector.onnx", channels=args.channels, input_hw=hw)
        built = {v: build(root, detector, v, args.embed_dim) for v in VARIANTS}
        med = time_inference({v: (f, t) for v, (f, t, _) in built.items()}, hw, args.rois, args.reps)
        cfgs = {v: c for v, (_, _, c) in built.items()}
    n = args.rois
    out = inference_rows(cfgs, med, n)
    print(f"stand-in {args.channels} ch, {hw[0]}x{hw[1]}, CPU (onnxruntime); median of {args.reps} reps")
    for v, r in out.items():
        print(f"{v:<12} params {r['parameters'] / 1e6:.2f}M  detector {r['detector_ms']:.0f} ms  fused(1) {r['fused_1_ms']:.0f} ms"
              f"  fused({n}) {r[f'fused_{n}_ms']:.0f} ms  fused(1)/detector {r['fused_1_over_detector']:.3f}"
              f"  per extra ROI/detector {r['per_extra_roi_over_detector']:.4f}")
    train = training(cfgs, args.train_rois, args.train_steps, args.train_threads)
    if args.json is not None:
        args.json.write_text(json.dumps({"variants": out, "training": train, "train_loss": {**{v: "points" if p else "full resolution"
                                         for v, p in POINTS.items()}, "detail-points": "points"}, "embed_dim": args.embed_dim,
                                         "channels": args.channels, "input_hw": list(hw)}, indent=2))


if __name__ == "__main__":
    main()
