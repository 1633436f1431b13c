"""The class softmax of the full-resolution masks in onnxruntime: ONNX ``Softmax`` on axis 1 against
:func:`roiseg.modeling.paste.class_softmax` (element-wise ops), on [N, 3, H, W] logits, in one run.

Both are exported from PyTorch (opset 17, dynamic N) and timed round-robin in one process
(onnxruntime CPU, default threads; median of ``--reps``); the outputs are compared with each other.

    uv run python bench/bench_class_softmax.py [--size 640] [--rois 1 8 33] [--reps 7]
"""

from __future__ import annotations

import argparse
import functools
import io
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from roiseg.modeling.paste import class_softmax

sys.path.insert(0, str(Path(__file__).parent))
from timing import round_robin  # noqa: E402


class _Softmax(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=1)


class _ClassSoftmax(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return class_softmax(x)


def session(module: torch.nn.Module, size: int) -> ort.InferenceSession:
    """onnxruntime CPU session of ``module`` exported on [N, 3, size, size] logits."""
    buf = io.BytesIO()
    torch.onnx.export(module, (torch.zeros(1, 3, size, size),), buf, input_names=["x"], output_names=["p"],
                      dynamic_axes={"x": {0: "n"}}, opset_version=17, dynamo=False)
    return ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--rois", type=int, nargs="+", default=[1, 8, 33])
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    sessions = {"Softmax(axis=1)": session(_Softmax(), args.size), "class_softmax": session(_ClassSoftmax(), args.size)}
    rng = np.random.default_rng(0)
    inputs = {n: (rng.standard_normal((n, 3, args.size, args.size)) * 5).astype(np.float32) for n in args.rois}
    times = round_robin({(k, n): functools.partial(s.run, None, {"x": inputs[n]}) for k, s in sessions.items()
                         for n in args.rois}, args.reps)
    print(f"[N, 3, {args.size}, {args.size}] logits, onnxruntime {ort.__version__} CPU, median of {args.reps}")
    for n in args.rois:
        old, new = (times[(k, n)] for k in sessions)
        a, b = (s.run(None, {"x": inputs[n]})[0] for s in sessions.values())
        print(f"N={n:3d}  Softmax {old * 1e3:8.2f} ms  class_softmax {new * 1e3:8.2f} ms  ratio {old / new:5.2f}x  "
              f"per ROI {old * 1e3 / n:6.2f} -> {new * 1e3 / n:5.2f} ms  max abs diff {np.abs(a - b).max():.1e}")


if __name__ == "__main__":
    main()
