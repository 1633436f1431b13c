"""Tables and per-ROI cost for ``compare_heads.py`` (kept apart so each file stays small)."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np

FIGURES = (("target_iou", "target IoU"), ("target_boundary_iou", "boundary IoU"),
           ("non_target_iou", "non-target IoU"), ("mask_ap", "mask AP"))


def figure(report: dict, name: str) -> float:
    """An overall figure of an ``roiseg evaluate`` report."""
    if name == "mask_ap":
        return float(report["mask_ap"]["AP"])
    return float(report["figures"][name]["all"]["mean"])


def _best_time(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def per_roi_cost(checkpoint: Path, detector: Path, tensor: str, reps: int = 5) -> dict:
    """Measured on one thread: the head's time per extra ROI (PyTorch, ROI-grid logits plus the paste
    at the input size) and the detector's onnxruntime time per image; parameters of the head."""
    import onnxruntime as ort
    import torch

    from roiseg.training.checkpoint import load_head

    torch.set_num_threads(1)
    head, state = load_head(checkpoint)
    cfg = head.cfg
    h, w = cfg.input_hw
    gen = torch.Generator().manual_seed(0)
    shapes = [(cfg.in_channels, h // cfg.stride, w // cfg.stride)]
    if cfg.num_extra_taps:
        shapes += [(c, h // s, w // s) for c, s in zip(cfg.extra_channels, cfg.extra_strides)]
    taps = [torch.randn(1, *s, generator=gen) for s in shapes]
    image = torch.rand(1, 3, h, w, generator=gen)

    def run(n: int) -> None:
        rois = torch.tensor([[0.2, 0.1, 0.6, 0.9]]).repeat(n, 1)
        with torch.no_grad():
            head.full_logits(taps if len(taps) > 1 else taps[0], rois, torch.zeros(n, dtype=torch.int64), image)

    one, nine = _best_time(lambda: run(1), reps), _best_time(lambda: run(9), reps)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(detector), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 1 for d in inp.shape], dtype=np.float32)
    det = _best_time(lambda: sess.run(None, {inp.name: x}), reps)
    return {"params": sum(p.numel() for p in head.parameters()), "roi_ms": (nine - one) / 8 * 1e3,
            "head1_ms": one * 1e3, "detector_ms": det * 1e3}


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"**{mean:.4f}** ({' / '.join(f'{v:.3f}' for v in values)})" if len(values) > 1 else f"{mean:.4f}"


def tables(dets: list[str], variants: list[str], seeds: list[int], reports: dict, costs: dict) -> str:
    """One Markdown table per detector: mean over seeds (per seed in brackets) and the costs."""
    out = []
    for d in dets:
        head = ["head", *(label for _, label in FIGURES), "whole-box floor", "params", "train ROIs/s",
                "per extra ROI (ms; share of detector)", "train min"]
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for v in variants:
            reps = [reports[(d, v, s)] for s in seeds]
            extra = [r.get("compare_heads", {}) for r in reps]
            c = costs[(d, v)]
            cells = [v, *(_cell([figure(r, k) for r in reps]) for k, _ in FIGURES),
                     f"{statistics.fmean(figure(r, 'box_floor_target_iou') for r in reps):.4f}",
                     f"{c['params'] / 1e6:.2f}M",
                     f"{statistics.fmean(e.get('rois_per_s', math.nan) for e in extra):.1f}",
                     f"{c['roi_ms']:.2f} ({100 * c['roi_ms'] / c['detector_ms']:.1f} %)",
                     f"{statistics.fmean(e.get('train_seconds', math.nan) for e in extra) / 60:.1f}"]
            rows.append("| " + " | ".join(cells) + " |")
        out += [f"### {d} (seeds {', '.join(map(str, seeds))})", "", *rows, ""]
    return "\n".join(out)
