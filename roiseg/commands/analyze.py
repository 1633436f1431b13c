"""``roiseg analyze``: pixel statistics of the ROI targets and loss class weights -> ``data_analyze.json``."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.conventions import CLASS_NAMES, DEFAULT_ANALYZE_JSON, DEFAULT_TRAIN_ANN


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "analyze",
        help="count background / target / non-target pixels in every person ROI; write class weights",
        description=(
            "For every person instance (ROI = its bbox, pixel inside when its centre is in the box), count at "
            "original resolution its own mask (target), other persons' masks (non_target) and the rest "
            "(background); write pixel counts and ratios, ROI size statistics and the loss class weights."
        ),
    )
    p.add_argument("--annotations", type=Path, default=Path(DEFAULT_TRAIN_ANN),
                   help=f"person-only COCO JSON (default {DEFAULT_TRAIN_ANN})")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_ANALYZE_JSON), help=f"output JSON (default {DEFAULT_ANALYZE_JSON})")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from roiseg.data.analyze import analyze
    from roiseg.utils.atomic import check_output_file, write_json

    check_output_file(args.out)  # before the (long) count
    result = analyze(args.annotations, workers=args.workers)
    write_json(args.out, result)
    ratios = ", ".join(f"{n} {result['pixel_ratios'][n]:.4f}" for n in CLASS_NAMES)
    weights = ", ".join(f"{n} {w:.3f}" for n, w in zip(CLASS_NAMES, result["class_weights"]))
    print(f"{result['num_images']} images, {result['num_instances']} ROIs")
    print(f"pixel ratios: {ratios}")
    print(f"class weights: {weights}")
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(result["skipped_annotations"].items()))
    if skipped:
        print(f"skipped annotations: {skipped}")
    print(f"wrote {args.out}")
    return 0
