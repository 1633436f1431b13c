"""Cost of the fused model against the trimmed detector alone and against a two-session pipeline.

Builds the stand-in detector at the reference shapes (1024 channels, 640x640 input, features
[1, 1024, 80, 80] at ``/model.34/Concat_output_0``) and a head with the default configuration
(detail variant, random weights), fuses them with ``roiseg fuse`` (simplified), and times in one
process, round-robin so that load changes hit every configuration alike:

* ``detector``: the trimmed detector alone (image -> features);
* ``fused N``: the fused model (image + N ROIs -> masks [N, 3, 640, 640]);
* ``pipeline N``: trimmed detector session, features to host (numpy), head session.

Each rep runs every configuration once; the median over ``--reps`` (after ``--warmup`` runs) is
reported with the ratios: fused(1) / detector, the per-extra-ROI cost (fused(max N) - fused(1)) /
(max N - 1) / detector, and fused(N) / pipeline(N).

    uv run python bench/bench_fused.py [--rois 1 8 32] [--reps 7] [--device cpu] [--json out.json]

With ``--outputs MODE ...`` it measures the output modes instead (``roiseg fuse --outputs``): one
fused model per mode, and for each N a fresh process (so no earlier run's memory is reused) that
creates the session, then runs once and reports the output bytes, the peak resident memory of that
run above the memory after session creation (Linux ``VmHWM`` reset through ``/proc/self/clear_refs``),
the absolute peak, and the median time of ``--reps`` more runs:

    uv run python bench/bench_fused.py --outputs probs labels target roi_logits [--rois 1 8 32] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from graph_tools import load_model, save_model, trim_at_tensor
from roiseg.export.wrapper import export_head
from roiseg.export.fuse import fuse
from roiseg.export.probes import plausible_rois, probe_rois, smooth_image
from roiseg.conventions import DEFAULT_FEATURE_TENSOR
from roiseg.features.extractor import describe_extractor
from roiseg.features.providers import choose_providers
from roiseg.modeling import HeadConfig, build_head
from roiseg.synthetic.detector import build_stand_in_detector
from roiseg.training.checkpoint import save_checkpoint


def build_models(root: Path, channels: int, input_hw: tuple[int, int]) -> dict[str, Path]:
    """Stand-in detector, default head checkpoint, fused model, trimmed detector and head ONNX under ``root``."""
    detector = build_stand_in_detector(root / "detector.onnx", channels=channels, input_hw=input_hw)
    info = describe_extractor(detector, DEFAULT_FEATURE_TENSOR)
    cfg = HeadConfig(in_channels=info.channels, stride=info.stride, input_hw=info.input_hw)
    torch.manual_seed(0)
    head = build_head(cfg).eval()
    ckpt = save_checkpoint(root / "head.pth", {
        "epoch": 0, "head_config": cfg.to_dict(), "model": head.state_dict(), "extractor": info.to_dict(),
        "metrics": {}, "config": {},
    })
    fused = fuse(detector, ckpt, out=root / "fused.onnx").out
    trimmed = save_model(trim_at_tensor(load_model(detector), DEFAULT_FEATURE_TENSOR), root / "trimmed.onnx")
    head_onnx = root / "head.onnx"
    export_head(head, head_onnx)
    return {"detector": detector, "fused": fused, "trimmed": trimmed, "head": head_onnx}


def _status_kb(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def measure_child(model: str, n: int, reps: int) -> dict:
    """In this (fresh) process: session, one run with ``n`` ROIs (memory), ``reps`` more (time)."""
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    hw = tuple(int(d) for d in sess.get_inputs()[0].shape[2:])
    feeds = {"images": smooth_image(hw, seed=0), "rois": probe_rois(plausible_rois(min(n, 3)), hw, n)[:n]}
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    base = _status_kb("VmRSS")
    outs = sess.run(None, feeds)
    peak = _status_kb("VmHWM")
    times = [timed(lambda: sess.run(None, feeds)) for _ in range(reps)]
    return {"output_bytes": int(sum(o.nbytes for o in outs)), "peak_over_session_mb": (peak - base) / 1024,
            "peak_rss_mb": peak / 1024, "median_ms": 1000 * statistics.median(times) if times else None,
            "outputs": {o.name: list(x.shape) for o, x in zip(sess.get_outputs(), outs)}}


def bench_outputs(args, hw: tuple[int, int]) -> dict:
    """One fused model per output mode; every (mode, N) measured in a fresh process."""
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="roiseg_bench_modes_") as tmp:
        root = Path(tmp)
        detector = build_stand_in_detector(root / "detector.onnx", channels=args.channels, input_hw=hw)
        info = describe_extractor(detector, DEFAULT_FEATURE_TENSOR)
        cfg = HeadConfig(in_channels=info.channels, stride=info.stride, input_hw=info.input_hw, variant=args.variant)
        torch.manual_seed(0)
        ckpt = save_checkpoint(root / "head.pth", {
            "epoch": 0, "head_config": cfg.to_dict(), "model": build_head(cfg).eval().state_dict(),
            "extractor": info.to_dict(), "metrics": {}, "config": {},
        })
        for mode in args.outputs:
            model = fuse(detector, ckpt, out=root / f"fused_{mode}.onnx", outputs=(mode,)).out
            for n in args.rois:
                cmd = [sys.executable, __file__, "--_measure", str(model), str(n), "--reps", str(args.reps)]
                res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
                results[f"{mode} {n}"] = res
                print(f"{mode:<10} N={n:<3} output {res['output_bytes'] / 1e6:9.2f} MB   peak over session "
                      f"{res['peak_over_session_mb']:8.1f} MB   peak RSS {res['peak_rss_mb']:8.1f} MB   "
                      f"median {res['median_ms']:8.1f} ms", flush=True)
    return results


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rois", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--channels", type=int, default=1024)
    ap.add_argument("--size", type=int, default=640, help="square input size in pixels")
    ap.add_argument("--device", default="cpu", help="auto | cpu | cuda (onnxruntime providers by availability)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    ap.add_argument("--outputs", nargs="+", default=None, metavar="MODE",
                    help="measure these output modes (bytes, peak memory, time) instead of the timing comparison")
    ap.add_argument("--variant", default="detail", help="head variant for --outputs (default detail)")
    ap.add_argument("--_measure", nargs=2, default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


def time_configurations(args: argparse.Namespace, hw: tuple[int, int]) -> tuple[dict[str, list[float]], list[str]]:
    """Round-robin times (seconds) of the detector, the fused model and the two-session pipeline per ROI count,
    and the providers used."""
    providers = choose_providers(args.device).providers
    with tempfile.TemporaryDirectory(prefix="roiseg_bench_fused_") as tmp:
        paths = build_models(Path(tmp), args.channels, hw)
        sessions = {k: ort.InferenceSession(str(paths[k]), providers=providers) for k in ("fused", "trimmed", "head")}
        image = smooth_image(hw, seed=0)
        rois = {n: probe_rois(plausible_rois(min(n, 3)), hw, n)[:n] for n in args.rois}

        def detector() -> np.ndarray:
            return sessions["trimmed"].run(None, {"images": image})[0]

        def fused(n: int):
            return sessions["fused"].run(None, {"images": image, "rois": rois[n]})[0]

        def pipeline(n: int):
            feats = detector()  # already on the host: onnxruntime returns numpy arrays
            return sessions["head"].run(None, {"features": feats, "rois": rois[n], "images": image})[0]

        configs = {"detector": detector}
        for n in args.rois:
            configs[f"fused {n}"] = lambda n=n: fused(n)
            configs[f"pipeline {n}"] = lambda n=n: pipeline(n)
        for _ in range(args.warmup):
            for fn in configs.values():
                fn()
        times: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(args.reps):
            for name, fn in configs.items():
                times[name].append(timed(fn))
        return times, sessions["fused"].get_providers()


def report_times(args: argparse.Namespace, hw: tuple[int, int], times: dict[str, list[float]], used: list[str]) -> None:
    """Print the medians and the ratios measured in this run (and write them as JSON with ``--json``)."""
    med = {k: statistics.median(v) for k, v in times.items()}
    lo, hi = min(args.rois), max(args.rois)
    det = med["detector"]
    ratios = {
        f"fused {lo} / detector": med[f"fused {lo}"] / det,
        f"per extra ROI / detector ({lo}->{hi})": (med[f"fused {hi}"] - med[f"fused {lo}"]) / (hi - lo) / det,
        **{f"fused {n} / pipeline {n}": med[f"fused {n}"] / med[f"pipeline {n}"] for n in args.rois},
    }
    print(f"providers: {', '.join(used)}; stand-in {args.channels} ch, {hw[0]}x{hw[1]}; "
          f"{args.reps} reps after {args.warmup} warm-up, median")
    print(f"{'configuration':<14} {'median ms':>10}   all reps (ms)")
    for name, values in times.items():
        print(f"{name:<14} {1000 * med[name]:>10.1f}   {', '.join(f'{1000 * v:.0f}' for v in values)}")
    for name, value in ratios.items():
        print(f"{name:<36} {value:.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps({"providers": used, "median_s": med, "times_s": times, "ratios": ratios,
                                         "reps": args.reps, "channels": args.channels, "input_hw": list(hw)}, indent=2))


def main() -> None:
    args = parse_args()
    if args._measure is not None:
        print(json.dumps(measure_child(args._measure[0], int(args._measure[1]), args.reps)))
        return
    hw = (args.size, args.size)
    if args.outputs:
        results = bench_outputs(args, hw)
        if args.json is not None:
            args.json.write_text(json.dumps({"outputs": results, "channels": args.channels, "input_hw": list(hw),
                                             "variant": args.variant, "reps": args.reps}, indent=2))
        return
    times, used = time_configurations(args, hw)
    report_times(args, hw, times, used)


if __name__ == "__main__":
    main()
