"""Start-up + one image of ``roiseg predict`` on a fused model: wall time and peak RSS of the whole process.

Each run is a fresh process (``roiseg predict --model M --image I [--roi ...] --device cpu``), measured by
``os.wait4`` (wall clock around it; CPU time ``ru_utime + ru_stime`` and ``ru_maxrss`` of that child alone:
CPU time depends less on what else runs on the machine than wall time). The median of ``--runs`` runs is
printed, and with ``--previous`` (another ``roiseg`` executable, e.g. the one of a checkout before
Architecture v2) the same command of it and the ratios new / previous. Measure installs whose bytecode
is compiled (``pip`` does it; ``uv pip install --compile-bytecode``; ``PYTHONDONTWRITEBYTECODE`` otherwise
makes every start compile every imported module).

    uv run python bench/bench_predict_startup.py --model models/roiseg_fused.onnx --image photo.jpg \\
        --roi 20,30,200,300 --previous /path/to/old/.venv/bin/roiseg

Targets (issue 18): start-up + one image <= 1 s, peak RSS <= 400 MB on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S: float = 1.0
TARGET_MB: float = 400.0


def measure(cmd: list[str]) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS in MB) of one run of ``cmd``; RuntimeError when it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0  # Linux: kilobytes


def predict_command(roiseg: str, args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [roiseg, "predict", "--model", str(args.model), "--image", str(args.image), "--out", str(out), "--device", "cpu"]
    for roi in args.roi or []:
        cmd += [f"--roi={roi}"]
    return cmd


def bench(roiseg: str, args: argparse.Namespace, label: str) -> tuple[float, float, float]:
    """Median wall time, CPU time and peak RSS over ``args.runs`` runs (after one warm-up run: file caches)."""
    with tempfile.TemporaryDirectory(prefix="roiseg_bench_") as tmp:
        cmd = predict_command(roiseg, args, Path(tmp) / "overlay.png")
        measure(cmd)
        runs = [measure(cmd) for _ in range(args.runs)]
    wall, cpu, rss = (statistics.median(r[i] for r in runs) for i in range(3))
    print(f"{label:<9} wall {wall:6.3f} s (min {min(r[0] for r in runs):.3f})  cpu {cpu:6.3f} s  peak RSS {rss:7.1f} MB"
          f"   (median of {args.runs})")
    return wall, cpu, rss


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="fused ONNX (a ROI model needs --roi)")
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--roi", action="append", default=None, metavar="X1,Y1,X2,Y2")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--roiseg", default=shutil.which("roiseg") or str(Path(sys.executable).parent / "roiseg"),
                   help="the roiseg executable to measure (default: this environment's)")
    p.add_argument("--previous", default=None, help="another roiseg executable to compare with")
    args = p.parse_args()
    print(f"roiseg predict on {args.model.name} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}): wall, peak RSS")
    wall, cpu, rss = bench(args.roiseg, args, "current")
    print(f"targets <= {TARGET_S:g} s, <= {TARGET_MB:g} MB: wall {'met' if wall <= TARGET_S else 'NOT met'}, "
          f"cpu {'met' if cpu <= TARGET_S else 'NOT met'}, RSS {'met' if rss <= TARGET_MB else 'NOT met'}")
    if args.previous:
        old_wall, old_cpu, old_rss = bench(args.previous, args, "previous")
        print(f"ratio current / previous: wall {wall / old_wall:.2f}, cpu {cpu / old_cpu:.2f}, peak RSS {rss / old_rss:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
