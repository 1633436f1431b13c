"""Feature-extraction throughput, and what the feature cache costs and saves per image.

Builds the stand-in detector at the reference shapes (1024 channels, 640x640 input, features
[1, 1024, 80, 80] at ``/model.34/Concat_output_0``), cuts it at the feature tensor and times
:class:`OnnxFeatureExtractor` (CPU; on CUDA the IOBinding path, chosen by availability) for each
batch size: ``--reps`` timed runs after a warm-up, images/s of every run and the median. Then
times the cache: a miss (extract + write fp16 ``.npy``) and a hit (read) per image. With
``../shared/extractors/yolox_nano.onnx`` present, the real YOLOX-nano backbone is timed too.

    uv run python bench/bench_extractor.py [--device auto] [--batch 1 4] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from roiseg.features import FeatureCache, OnnxFeatureExtractor
from roiseg.synthetic.detector import build_stand_in_detector

REPO = Path(__file__).resolve().parents[1]
YOLOX_NANO = REPO.parent / "shared" / "extractors" / "yolox_nano.onnx"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_extraction(ext: OnnxFeatureExtractor, batch: int, reps: int, warmup: int) -> list[float]:
    """Images/s of ``reps`` timed calls on a random [batch, 3, H, W] input (after ``warmup`` calls)."""
    x = torch.rand(batch, 3, *ext.info.input_hw)
    if ext.device.type == "cuda":
        x = x.to(ext.device)
    for _ in range(warmup):
        ext(x)
    rates = []
    for _ in range(reps):
        _sync(ext.device)
        t0 = time.perf_counter()
        ext(x)
        _sync(ext.device)
        rates.append(batch / (time.perf_counter() - t0))
    return rates


def time_cache(ext: OnnxFeatureExtractor, n_images: int, root: Path) -> tuple[float, float, float]:
    """(ms per image on a miss, ms per image on a hit, MB per cached image) over ``n_images`` PNGs."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_images):
        p = root / "images" / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), rng.integers(0, 256, (*ext.info.input_hw, 3), dtype=np.uint8))
        paths.append(str(p))
    cache = FeatureCache(ext, root / "cache")
    misses, hits = [], []
    for p in paths:  # one image at a time, as a batch-1 data loader would
        t0 = time.perf_counter()
        cache.features([p])
        _sync(ext.device)
        misses.append(time.perf_counter() - t0)
    for p in paths:
        t0 = time.perf_counter()
        cache.features([p])
        _sync(ext.device)
        hits.append(time.perf_counter() - t0)
    size_mb = cache.file_for(paths[0]).stat().st_size / 1e6
    return statistics.median(misses) * 1e3, statistics.median(hits) * 1e3, size_mb


def report(name: str, ext: OnnxFeatureExtractor, batches: list[int], reps: int, warmup: int) -> None:
    info = ext.info
    print(f"\n## {name}: input {info.input_hw[0]}x{info.input_hw[1]} -> [{info.channels}, "
          f"{info.feature_hw[0]}, {info.feature_hw[1]}], providers {', '.join(ext.providers)}, device {ext.device}")
    print("| batch | images/s per rep | median images/s | median ms/image |")
    print("|---|---|---|---|")
    for b in batches:
        rates = time_extraction(ext, b, reps, warmup)
        med = statistics.median(rates)
        print(f"| {b} | {', '.join(f'{r:.2f}' for r in rates)} | {med:.2f} | {1e3 / med:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--channels", type=int, default=1024)
    parser.add_argument("--input", type=int, default=640, help="square input size of the stand-in")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cache-images", type=int, default=8, help="images for the cache timing (0: skip)")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_stand_in_detector(tmp / "stand_in.onnx", channels=args.channels,
                                        input_hw=(args.input, args.input), mode="full")
        ext = OnnxFeatureExtractor(model, device=args.device)
        report("stand-in (reference shapes)", ext, args.batch, args.reps, args.warmup)
        if args.cache_images:
            miss_ms, hit_ms, size_mb = time_cache(ext, args.cache_images, tmp)
            print(f"\ncache, {args.cache_images} images, batch 1, median: miss (extract + write fp16) {miss_ms:.1f} ms/image, "
                  f"hit (read, warm page cache) {hit_ms:.1f} ms/image, {size_mb:.2f} MB/image on disk")
        if YOLOX_NANO.is_file():
            report("yolox_nano input.663 (real backbone)", OnnxFeatureExtractor(YOLOX_NANO, "input.663", args.device),
                   args.batch, args.reps, args.warmup)


if __name__ == "__main__":
    main()
