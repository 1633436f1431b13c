"""``roiseg prepare-coco``: original COCO instances JSON -> person-only, no-crowd files (+ subsets)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "prepare-coco",
        help="write <stem>_person_only_no_crowd[_N].json from a COCO instances JSON",
        description=(
            "Keep person annotations (category 1) with iscrowd 0, drop images that have a crowd person or no "
            "person, and write <stem>_person_only_no_crowd.json plus one <stem>_person_only_no_crowd_<N>.json "
            "per --subset (N images drawn from --seed; smaller subsets lie inside larger ones)."
        ),
    )
    p.add_argument("--instances", required=True, type=Path, help="original COCO instances JSON")
    p.add_argument("--out-dir", type=Path, default=None, help="output folder (default: the folder of --instances)")
    p.add_argument("--subset", type=int, action="append", default=[], metavar="N",
                   help="also write a subset of N images; repeatable (e.g. --subset 500 --subset 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset draw (default 0)")
    p.add_argument("--images-dir", type=Path, default=None,
                   help="optional image folder: images absent there are dropped and counted")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from roiseg.data.prepare import prepare_coco

    out_dir = args.out_dir if args.out_dir is not None else args.instances.parent
    report = prepare_coco(args.instances, out_dir, subsets=args.subset, seed=args.seed, images_dir=args.images_dir)
    for item in report["written"]:
        print(f"{item['path']}: {item['images']} images, {item['annotations']} person annotations")
    dropped = ", ".join(f"{k} {v}" for k, v in sorted(report["dropped_images"].items())) or "none"
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(report["skipped_annotations"].items())) or "none"
    print(f"dropped images: {dropped}; skipped annotations: {skipped}")
    return 0
