"""Head comparison protocol: every variant, on every real detector, with the defaults, 2+ seeds.

For each detector x variant x seed: ``roiseg train`` with the defaults of ``configs/default.toml``
(only the variant's own keys change), then ``roiseg evaluate`` of ``best.pth`` on the val set at
the original resolution. The per-detector settings (feature tensor, preprocessing) are properties of
the detector, not of the head. Then one table per detector, mean over seeds (per-seed values in
brackets): target, boundary and non-target IoU, mask AP, the whole-box floor, parameters, train
ROIs/s (median over epochs 2..), and the measured per-ROI cost of the head (PyTorch, one thread:
the time of one extra ROI as a share of the detector's onnxruntime run on the same machine).

Runs that finished (their evaluation report exists) are reused, so the command resumes. ``--jobs 2``
runs two trainings at a time with one torch thread each (the machine has two cores).

    uv run python bench/compare_heads.py --detectors yolox_nano,yolo11n --seeds 0,1 \\
        --variants hybrid-local-person-nbc,hybrid-local-person-nb,hybrid-local-person,hybrid-local,hybrid,query,detail --work /tmp/heads --markdown /tmp/heads/table.md

The data is ``../shared/coco-persons`` (``--data``), prepared with ``prepare-coco`` and ``analyze``
into ``WORK/data`` on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROISEG_SHARED", ROOT.parent / "shared"))


@dataclass(frozen=True)
class Detector:
    """A real detector: its file, the tensor the head reads and its own preprocessing."""

    path: Path
    tensor: str
    sets: tuple[str, ...] = ()


DETECTORS: dict[str, Detector] = {
    "yolox_nano": Detector(SHARED / "extractors/yolox_nano.onnx", "input.663",
                           ("features.color=bgr", "features.scale=1.0")),
    "yolo11n": Detector(SHARED / "extractors/yolo11n.onnx", "/model.15/Concat_output_0"),
}


def _query(refine: int, local: int, embed: int = 32, *extra: str, person: bool = False,
           neighbours: bool = False, neighbour_convs: bool = False) -> tuple[str, ...]:
    """``--set`` overrides of a ``query`` head with these widths (every width named, so a later change of
    the defaults does not change what a measured variant is)."""
    return ("head.variant=query", f"head.refine_channels={refine}", f"head.embed_dim={embed}",
            f"head.local_channels={local}", f"head.person_aux={str(person).lower()}",
            f"head.neighbour_map={str(neighbours).lower()}", f"head.neighbour_convs={str(neighbour_convs).lower()}",
            *extra)


VARIANTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "detail": ("head.variant=detail",),
    "query": _query(0, 0),
    "query-hard": _query(0, 0, 32, "head.attention_mask=hard", "head.box_prior=0.0"),
    "hybrid": _query(16, 0),
    "hybrid-local": _query(16, 64),
    "hybrid-local128": _query(16, 128),
    "hybrid-local-m112": _query(16, 64, 32, "head.mask_size=112"),
    "hybrid-local-r32": _query(32, 64),
    "hybrid-local-s28": _query(16, 64, 32, "head.roi_size=28"),
    "hybrid-local-person": _query(16, 64, person=True),
    "hybrid-local-person-nb": _query(16, 64, person=True, neighbours=True),
    "hybrid-local-person-nbc": _query(16, 64, person=True, neighbours=True, neighbour_convs=True),
    "hybrid-local256-person-nbc": _query(16, 256, person=True, neighbours=True, neighbour_convs=True),
    "hybrid-d64": _query(16, 0, 64),
    "hybrid-d128": _query(16, 0, 128),
    "hybrid-auto": _query(16, 0, 0),
}
"""Each variant as ``--set`` overrides of the defaults (``default``: none)."""
DEFAULT_VARIANT = "hybrid-local-person-nbc"
"""The measured variant that ``configs/default.toml`` ships (docs/heads.md)."""


def variant_list(text: str) -> list[str]:
    """``"a,b"`` -> ``["a", "b"]``, each a key of :data:`VARIANTS` (argparse type: a usage error otherwise)."""
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(sorted(VARIANTS))}")
    return names


def head_overrides(variant: str) -> dict[str, object]:
    """``VARIANTS[variant]`` as :class:`roiseg.modeling.HeadConfig` fields (parsed as ``roiseg train --set`` does)."""
    from roiseg.utils.overrides import parse_set

    return {k.removeprefix("head."): v for k, v in parse_set(VARIANTS[variant]).items()}


def uv_run(args: list[str], log: Path, threads: int) -> None:
    """``uv run roiseg ARGS`` with ``threads`` torch/OpenMP threads; output to ``log``; raises on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "w") as fh:
        code = subprocess.call(["uv", "run", "--frozen", "roiseg", *args], cwd=ROOT, env=env, stdout=fh, stderr=fh)
    if code:
        raise RuntimeError(f"roiseg {args[0]} failed (exit {code}); see {log}")


def prepare(data: Path, work: Path, max_train: int) -> dict[str, Path]:
    """person-only no-crowd train/val JSONs and ``data_analyze.json`` under ``WORK/data`` (once)."""
    out = work / "data"
    out.mkdir(parents=True, exist_ok=True)
    paths = {s: out / f"person_{s}_person_only_no_crowd.json" for s in ("train", "val")}
    for split, path in paths.items():
        if not path.exists():
            uv_run(["prepare-coco", "--instances", str(data / f"annotations/person_{split}.json"), "--out-dir", str(out),
                    "--images-dir", str(data / "images")], out / f"prepare_{split}.log", 2)
    if max_train:
        paths["train"] = subset(paths["train"], max_train)
    analyze = paths["train"].with_suffix(".analyze.json")
    if not analyze.exists():
        uv_run(["analyze", "--annotations", str(paths["train"]), "--out", str(analyze)], out / "analyze.log", 2)
    return {**paths, "analyze": analyze, "images": data / "images"}


def subset(train: Path, n: int) -> Path:
    """The first ``n`` images of a person-only JSON (in file order) with their annotations."""
    out = train.with_name(f"{train.stem}_{n}.json")
    if not out.exists():
        d = json.loads(train.read_text())
        keep = {im["id"] for im in d["images"][:n]}
        d["images"] = [im for im in d["images"] if im["id"] in keep]
        d["annotations"] = [a for a in d["annotations"] if a["image_id"] in keep]
        out.write_text(json.dumps(d))
    return out


def run_one(det_name: str, variant: str, seed: int, paths: dict[str, Path], work: Path, threads: int,
            extra: tuple[str, ...]) -> Path:
    """Train + evaluate one configuration; returns its evaluation report (reused when present).

    ``paths``: the prepared files of :func:`prepare` plus ``cache`` (the feature cache, shared by all runs).
    """
    det = DETECTORS[det_name]
    tag = f"{det_name}-{variant}-s{seed}"
    run, report = work / "runs" / tag, work / "evals" / f"{tag}.json"
    if report.exists():
        return report
    report.parent.mkdir(parents=True, exist_ok=True)
    sets = [*det.sets, *VARIANTS[variant], "train.picture=false", *extra]
    t0 = time.time()
    uv_run(["train", "--train-ann", str(paths["train"]), "--val-ann", str(paths["val"]),
            "--train-images", str(paths["images"]), "--val-images", str(paths["images"]),
            "--analyze-json", str(paths["analyze"]), "--extractor", str(det.path), "--feature-tensor", det.tensor,
            "--cache", str(paths["cache"]), "--num-workers", "1", "--device", "cpu", "--seed", str(seed),
            "--out", str(run), *[a for s in sets for a in ("--set", s)]], work / f"{tag}.train.log", threads)
    train_s = time.time() - t0
    uv_run(["evaluate", "--model", str(run / "best.pth"), "--extractor", str(det.path),
            "--annotations", str(paths["val"]), "--images", str(paths["images"]), "--device", "cpu",
            "--report", str(report)], work / f"{tag}.eval.log", threads)
    rec = json.loads(report.read_text())
    rec["compare_heads"] = {"train_seconds": train_s, "rois_per_s": train_rate(run)}
    report.write_text(json.dumps(rec))
    print(f"{tag}: target IoU {rec['figures']['target_iou']['all']['mean']:.4f} ({train_s / 60:.1f} min)", flush=True)
    return report


def train_rate(run: Path) -> float:
    """Median train ROIs/s over epochs 2.. (epoch 1 fills the feature cache), from ``metrics.jsonl``."""
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["rois_per_s"] for r in recs if "rois_per_s" in r]
    return statistics.median(rates[1:] or rates) if rates else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detectors", default="yolox_nano,yolo11n")
    ap.add_argument("--variants", type=variant_list,
                    default="hybrid-local-person-nbc,hybrid-local-person-nb,hybrid-local-person,hybrid-local,hybrid,query,detail")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--data", type=Path, default=SHARED / "coco-persons")
    ap.add_argument("--work", type=Path, default=Path("/tmp/roiseg_compare_heads"))
    ap.add_argument("--max-train-images", type=int, default=0, help="first N train images (learning curve)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra override for every run")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--markdown", type=Path, help="write the tables here (atomically)")
    args = ap.parse_args(argv)
    from compare_heads_report import per_roi_cost, tables  # noqa: E402  (bench/ sibling)

    dets, variants = args.detectors.split(","), args.variants
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in dets:
        if name not in DETECTORS:
            ap.error(f"unknown detector {name!r}")
    work = args.work / (f"n{args.max_train_images}" if args.max_train_images else "")
    paths = {**prepare(args.data, args.work, args.max_train_images), "cache": args.work / "cache"}
    jobs = [(d, v, s) for d in dets for v in variants for s in seeds]
    threads = 1 if args.jobs > 1 else 2
    with ThreadPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(lambda j: run_one(*j, paths, work, threads, tuple(args.sets)), jobs))
    costs = {(d, v): per_roi_cost(work / "runs" / f"{d}-{v}-s{seeds[0]}" / "best.pth", DETECTORS[d].path,
                                  DETECTORS[d].tensor) for d in dets for v in variants}
    text = tables(dets, variants, seeds, {j: json.loads(r.read_text()) for j, r in zip(jobs, reports)}, costs)
    print(text)
    write_text(args.markdown, text)
    return 0


def write_text(path: Path | None, text: str) -> None:
    """Write ``text`` to ``path`` (when given) under a temporary name, then rename."""
    if path is not None:
        tmp = path.with_suffix(".partial")
        tmp.write_text(text)
        tmp.replace(path)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
