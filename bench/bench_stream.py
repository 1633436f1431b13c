"""``predict --source VIDEO`` against a Python loop over the single-image path, and memory over a long video.

Builds a YOLOX-nano instance model (``../shared/extractors/yolox_nano.onnx`` with its own
preprocessing; a ``query`` head with random weights and the box prior, so masks are real work), and a
video of a coco-tiny photo with persons, shifted a little every frame. Then, in one run:

* ``stream``: ``roiseg predict --source video.avi --save-json r.json --out overlay.avi`` in a fresh
  process: frames/s (frames / wall time of the command) and its peak RSS, on ``--short`` and ``--long``
  frames (peak RSS of the long run over the short one: flat memory means ~1);
* ``loop``: the single-image path (``roiseg.runtime.instances.predict_instances`` on each frame saved as
  a JPEG, overlay written), ``--loop-frames`` of them in one process: frames/s.

    uv run python bench/bench_stream.py [--short 300] [--long 3000] [--loop-frames 60] [--size 240x320]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROISEG_SHARED", ROOT.parent / "shared"))
PHOTO = SHARED / "coco-tiny/images/val2017/000000020992.jpg"  # one person


def instance_model(root: Path) -> Path:
    import torch

    from roiseg.conventions import Preprocessing
    from roiseg.export.instances import fuse_instances
    from roiseg.features.extractor import describe_extractor
    from roiseg.modeling import HeadConfig, build_head
    from roiseg.training.checkpoint import save_checkpoint

    detector, pre = SHARED / "extractors/yolox_nano.onnx", Preprocessing(color="bgr", scale=1.0)
    info = describe_extractor(detector, "input.663", pre, extra_tensors="auto")
    cfg = HeadConfig(in_channels=info.channels, stride=info.stride, input_hw=info.input_hw,
                     extra_channels=info.extra_channels, extra_strides=info.extra_strides)
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "head.pth", {"epoch": 0, "head_config": cfg.to_dict(), "model": build_head(cfg).state_dict(),
                                               "extractor": info.to_dict(), "metrics": {}, "config": {}})
    return fuse_instances(detector, ckpt, root / "instances.onnx", check_images=[PHOTO]).out


def make_video(path: Path, frames: int, hw: tuple[int, int], fps: float = 25.0) -> Path:
    photo = cv2.resize(cv2.imread(str(PHOTO)), (hw[1] + 16, hw[0] + 16))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (hw[1], hw[0]))
    for i in range(frames):
        dx, dy = i % 16, (i // 16) % 16
        writer.write(np.ascontiguousarray(photo[dy:dy + hw[0], dx:dx + hw[1]]))
    writer.release()
    return path


def stream(model: Path, video: Path, root: Path) -> tuple[float, float]:
    """(seconds, peak RSS MB) of ``roiseg predict --source`` in a fresh process."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "roiseg", "predict", "--model", str(model), "--source",
           str(video), "--out", str(root / f"{video.stem}_overlay.avi"), "--save-json", str(root / f"{video.stem}.json"),
           "--device", "cpu"]
    seconds, rss = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout.split()
    return float(seconds), float(rss)


def loop(model: Path, video: Path, frames: int, root: Path) -> float:
    """Seconds for ``frames`` frames through the single-image path (one JPEG and one call per frame)."""
    from roiseg.runtime.instances import predict_instances

    cap = cv2.VideoCapture(str(video))
    t0 = time.perf_counter()
    for i in range(frames):
        ok, frame = cap.read()
        jpg = root / f"loop_{i:05d}.jpg"
        cv2.imwrite(str(jpg), frame)
        predict_instances(model, jpg, out=root / f"loop_{i:05d}.png", device="cpu")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", type=int, default=300)
    ap.add_argument("--long", type=int, default=3000)
    ap.add_argument("--loop-frames", type=int, default=60)
    ap.add_argument("--size", default="240x320", help="frame HxW")
    args = ap.parse_args()
    hw = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="roiseg_bench_stream_") as tmp:
        root = Path(tmp)
        model = instance_model(root)
        short, long_ = make_video(root / "short.avi", args.short, hw), make_video(root / "long.avi", args.long, hw)
        s_short, rss_short = stream(model, short, root)
        looped = loop(model, short, args.loop_frames, root)
        s_long, rss_long = stream(model, long_, root)
    fps_stream, fps_loop = args.short / s_short, args.loop_frames / looped
    print(f"YOLOX-nano instance model, {hw[0]}x{hw[1]} frames, CPU")
    print(f"stream {args.short} frames: {s_short:.1f} s, {fps_stream:.2f} frames/s, peak RSS {rss_short:.0f} MB")
    print(f"stream {args.long} frames: {s_long:.1f} s, {args.long / s_long:.2f} frames/s, peak RSS {rss_long:.0f} MB")
    print(f"single-image loop {args.loop_frames} frames: {looped:.1f} s, {fps_loop:.2f} frames/s")
    print(f"ratios: stream / loop frames/s {fps_stream / fps_loop:.2f}; peak RSS {args.long} / {args.short} frames "
          f"{rss_long / rss_short:.3f}")


if __name__ == "__main__":
    main()
