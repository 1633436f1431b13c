"""Pasting ``roi_logits`` in numpy (what ``predict`` / ``evaluate`` do for a ``--outputs roi_logits`` model):
:func:`roiseg.runtime.masks.paste_probabilities`, which resamples and softmaxes each box's own pixels only,
against the whole-frame formulation (every pixel of every ROI, then the inside mask; the code before
2026-12-06), on the same logits and boxes, timed round-robin in one run; the outputs are compared.

    uv run python bench/bench_paste.py [--hw 480 640] [--rois 1 10 40] [--reps 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from roiseg.conventions import BACKGROUND, NUM_CLASSES
from roiseg.runtime.masks import _interp, paste_probabilities

sys.path.insert(0, str(Path(__file__).parent))
from timing import round_robin  # noqa: E402


def whole_frame(roi_logits: np.ndarray, rois: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """The same probabilities computed at every pixel of the frame for every ROI, then masked to the box."""
    h, w = hw
    px = rois * np.array([w, h, w, h], np.float32)
    wy, wx = _interp(px[:, 1], px[:, 3], h, roi_logits.shape[-2]), _interp(px[:, 0], px[:, 2], w, roi_logits.shape[-1])
    logits = np.matmul(np.matmul(wy[:, None], roi_logits), wx.transpose(0, 2, 1)[:, None])
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    cy, cx = np.arange(h, dtype=np.float32) + 0.5, np.arange(w, dtype=np.float32) + 0.5
    inside = (((cy[None] >= px[:, 1:2]) & (cy[None] < px[:, 3:4]))[:, :, None]
              & ((cx[None] >= px[:, 0:1]) & (cx[None] < px[:, 2:3]))[:, None, :])[:, None]
    background = (np.arange(NUM_CLASSES) == BACKGROUND).astype(np.float32).reshape(1, -1, 1, 1)
    return np.where(inside, probs, background).astype(np.float32)


def person_boxes(n: int, seed: int = 0) -> np.ndarray:
    """[n, 4] normalised x1y1x2y2 boxes of person-like sizes (5-30 % wide, 10-50 % high)."""
    rng = np.random.default_rng(seed)
    x1, y1 = rng.uniform(0, 0.7, n), rng.uniform(0, 0.5, n)
    return np.stack([x1, y1, x1 + rng.uniform(0.05, 0.3, n), y1 + rng.uniform(0.1, 0.5, n)], 1).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hw", type=int, nargs=2, default=[480, 640], help="original image size (pixels)")
    ap.add_argument("--rois", type=int, nargs="+", default=[1, 10, 40])
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    hw = (args.hw[0], args.hw[1])
    print(f"{'ROIs':>5} {'whole frame ms':>15} {'box only ms':>12} {'speed-up':>9} {'max abs diff':>13}")
    for n in args.rois:
        rois = person_boxes(n)
        logits = np.random.default_rng(n).normal(0, 2, (n, NUM_CLASSES, 56, 56)).astype(np.float32)
        t = round_robin({"whole": lambda: whole_frame(logits, rois, hw),
                         "box": lambda: paste_probabilities(logits, rois, hw)}, args.reps)
        diff = float(np.abs(whole_frame(logits, rois, hw) - paste_probabilities(logits, rois, hw)).max())
        print(f"{n:>5} {1e3 * t['whole']:>15.1f} {1e3 * t['box']:>12.1f} {t['whole'] / t['box']:>8.1f}x {diff:>13.2e}")


if __name__ == "__main__":
    main()
