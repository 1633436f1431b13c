"""Class ids of [N, 3, H, W] masks in PyTorch on CPU: ``torch.argmax(dim=1)`` against
:func:`roiseg.modeling.paste.class_ids` (``torch.max(dim=1).indices``), in one run.

Training's validation takes the class ids of every val batch's full-resolution probabilities (and the
validation picture of its resized ones); both are timed round-robin on the same random probabilities
(median of ``--reps``, default torch threads) and checked to give the same ids.

    uv run python bench/bench_class_ids.py [--size 640] [--rois 1 4 16] [--reps 7]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from roiseg.modeling.paste import class_ids

sys.path.insert(0, str(Path(__file__).parent))
from timing import round_robin  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--rois", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    print(f"[N, 3, {args.size}, {args.size}] float32, CPU, {torch.get_num_threads()} threads, median of {args.reps}")
    for n in args.rois:
        probs = torch.softmax(torch.randn(n, 3, args.size, args.size), dim=1)
        assert torch.equal(class_ids(probs), torch.argmax(probs, dim=1))
        med = round_robin({"argmax": lambda: torch.argmax(probs, dim=1), "class_ids": lambda: class_ids(probs)},
                          args.reps)
        print(f"N={n:>3}: torch.argmax {1000 * med['argmax']:8.1f} ms   class_ids {1000 * med['class_ids']:7.1f} ms"
              f"   speed-up {med['argmax'] / med['class_ids']:.1f}x")


if __name__ == "__main__":
    main()
