"""Peak memory of ``roiseg parity-check --fused`` with and without large blocks on ``mmap``.

Runs the real command (``roiseg.cli.main``) in a fresh process per configuration and reports that
process's peak resident size (``ru_maxrss``) and wall time:

* ``mapped``: the command as shipped (:func:`roiseg.utils.memory.map_large_blocks` at its start);
* ``default``: the same command with that call replaced by a no-op (glibc's growing threshold).

Without ``--fused/--head`` it builds them first: a head of ``--variant`` with random weights on the
detector at ``--feature-tensor`` (default: yolox_nano at its stride-8 map), fused as ``roiseg fuse``
does. Default images: coco-tiny val (42 images with persons, 793 ROIs incl. the 64-ROI set).
Configurations alternate over ``--reps`` so load changes hit both alike; the medians are reported
with the ratios mapped / default and the peak against the 1.5 GB target (issue #13).

    uv run python bench/bench_parity_memory.py [--fused F --head H] [--variant detail] [--reps 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TARGET_GB = 1.5
CONFIGS = ("default", "mapped")


def child(config: str, argv: list[str]) -> None:
    """In this fresh process: run ``roiseg parity-check`` with ``argv``; print peak RSS and time as JSON."""
    import roiseg.utils.memory as memory
    from roiseg.cli import main

    if config == "default":
        memory.map_large_blocks = lambda *a, **k: False
    start = time.perf_counter()
    code = main(["parity-check", *argv])
    wall = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    print(json.dumps({"peak_gb": peak_kb / 1e6, "wall_s": wall, "exit": code}))


def build(root: Path, detector: Path, tensor: str, variant: str | None) -> tuple[Path, Path]:
    """A random-weight checkpoint of ``variant`` (default: training's) for ``detector`` at ``tensor``
    with training's default taps, and its fused model."""
    import torch

    from roiseg.export.fuse import fuse
    from roiseg.features.info import describe_extractor
    from roiseg.modeling import build_head
    from roiseg.training.build import TAP_VARIANTS
    from roiseg.training.checkpoint import save_checkpoint
    from roiseg.training.config import TrainConfig

    section = TrainConfig().head
    section.variant = variant or section.variant
    extras = TrainConfig().features.extra_tensors if section.variant in TAP_VARIANTS else ()
    info = describe_extractor(detector, tensor, extra_tensors=extras)
    cfg = section.head_config(info.channels, info.stride, info.input_hw, info.extra_channels, info.extra_strides)
    print(f"building a random-weight {cfg.variant} head for {detector.name} at {tensor} "
          f"(taps {', '.join(info.extra_tensors) or 'none'})", flush=True)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "head.pth", {
        "epoch": 0, "head_config": cfg.to_dict(), "model": build_head(cfg).eval().state_dict(),
        "extractor": info.to_dict(), "metrics": {}, "config": {},
    })
    return fuse(detector, ckpt, out=root / "fused.onnx").out, ckpt


def measure(args: argparse.Namespace, fused: Path, head: Path, report_dir: Path) -> dict[str, list[dict]]:
    """Every configuration ``args.reps`` times, alternating, each in a fresh process."""
    results: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    for rep in range(args.reps):
        for config in CONFIGS:
            argv = ["--fused", str(fused), "--yolo", str(args.detector), "--head", str(head),
                    "--annotations", str(args.annotations), "--images", str(args.images),
                    "--report", str(report_dir / f"{config}_{rep}.json")]
            cmd = [sys.executable, __file__, "--_child", config, "--", *argv]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            results[config].append(json.loads(out))
            print(f"rep {rep} {config:<8} peak {results[config][-1]['peak_gb']:.3f} GB, "
                  f"{results[config][-1]['wall_s']:.1f} s", flush=True)
    return results


def summary(results: dict[str, list[dict]]) -> dict[str, float]:
    """Medians per configuration and the ratios mapped / default."""
    med = {c: {k: statistics.median(r[k] for r in results[c]) for k in ("peak_gb", "wall_s")} for c in CONFIGS}
    return {
        "default_peak_gb": med["default"]["peak_gb"], "mapped_peak_gb": med["mapped"]["peak_gb"],
        "peak_ratio": med["mapped"]["peak_gb"] / med["default"]["peak_gb"],
        "default_wall_s": med["default"]["wall_s"], "mapped_wall_s": med["mapped"]["wall_s"],
        "time_ratio": med["mapped"]["wall_s"] / med["default"]["wall_s"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", type=Path, default=SHARED / "extractors" / "yolox_nano.onnx")
    p.add_argument("--feature-tensor", default="input.663")
    p.add_argument("--variant", default=None, help="head variant when building (default: the default variant)")
    p.add_argument("--fused", type=Path, default=None)
    p.add_argument("--head", type=Path, default=None)
    p.add_argument("--annotations", type=Path, default=SHARED / "coco-tiny" / "annotations" / "instances_val2017.json")
    p.add_argument("--images", type=Path, default=SHARED / "coco-tiny" / "images" / "val2017")
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--_child", choices=CONFIGS, default=None, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args._child:
        child(args._child, [a for a in rest if a != "--"])
        return
    with tempfile.TemporaryDirectory(prefix="roiseg_bench_parity_") as tmp:
        root = Path(tmp)
        if args.fused is None or args.head is None:
            args.fused, args.head = build(root, args.detector, args.feature_tensor, args.variant)
        results = measure(args, args.fused, args.head, root)
        passed = {c: all(r["exit"] == 0 for r in results[c]) for c in CONFIGS}
        s = summary(results)
    print(f"peak RSS: default {s['default_peak_gb']:.3f} GB, mapped {s['mapped_peak_gb']:.3f} GB "
          f"(ratio {s['peak_ratio']:.3f}; target <= {TARGET_GB} GB: {'met' if s['mapped_peak_gb'] <= TARGET_GB else 'missed'})")
    print(f"wall time: default {s['default_wall_s']:.1f} s, mapped {s['mapped_wall_s']:.1f} s (ratio {s['time_ratio']:.3f}); "
          f"parity passed: {passed}")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": s, "passed": passed}, indent=2))


if __name__ == "__main__":
    main()
