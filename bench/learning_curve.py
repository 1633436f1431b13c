"""Learning curve: head variants trained on growing subsets of coco-persons train, one detector.

Runs ``compare_heads.py`` (train with the defaults + ``roiseg evaluate`` on the whole val set at the
original resolution) for each variant and subset size (the first N images of the prepared train set; N = 0 or
the full count is the whole set, shared with the head comparison when ``--work`` is the same), then
plots target and boundary IoU against the number of training images (one colour per variant) and writes a
Markdown table.

    uv run python bench/learning_curve.py --detector yolo11n --variants hybrid-local-person-nbc,detail \\
        --sizes 88,177,354,0 --seeds 0,1 --work /tmp/heads --plot docs/learning_curve.png --markdown curve.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import compare_heads as ch  # noqa: E402
from compare_heads_report import figure  # noqa: E402


def point(args: argparse.Namespace, variant: str, size: int) -> dict:
    """Train + evaluate every seed of ``variant`` at one subset size (reused when done); mean figures."""
    work = args.work / (f"n{size}" if size else "")
    paths = {**ch.prepare(args.data, args.work, size), "cache": args.work / "cache"}
    reports = [json.loads(ch.run_one(args.detector, variant, s, paths, work, 2, ()).read_text())
               for s in args.seeds]
    images = len(json.loads(paths["train"].read_text())["images"])
    return {"variant": variant, "images": images, **{k: statistics.fmean(figure(r, k) for r in reports)
                                 for k in ("target_iou", "target_boundary_iou", "mask_ap", "box_floor_target_iou")}}


def plot(points: list[dict], title: str, out: Path) -> None:
    """Target (solid) and boundary IoU (dotted) against training images (log x), one colour per variant, the
    whole-box floor dashed grey."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = sorted({p["images"] for p in points})
    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=110)
    for i, variant in enumerate(dict.fromkeys(p["variant"] for p in points)):
        own = [p for p in points if p["variant"] == variant]
        xs, colour = [p["images"] for p in own], f"C{i}"
        ax.plot(xs, [p["target_iou"] for p in own], "o-", c=colour, label=f"{variant}: target IoU")
        ax.plot(xs, [p["target_boundary_iou"] for p in own], "s:", c=colour, label=f"{variant}: boundary IoU")
    ax.axhline(statistics.fmean(p["box_floor_target_iou"] for p in points), ls="--", c="grey", label="whole-box floor")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(x, [str(v) for v in x])
    ax.set_xlabel("training images (coco-persons train)")
    ax.set_ylabel("coco-persons val, original resolution")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = out.with_name(out.stem + ".partial.png")
    fig.savefig(tmp)
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", default="yolo11n", choices=sorted(ch.DETECTORS))
    ap.add_argument("--variants", default="default", type=ch.variant_list,
                    help=f"comma-separated, of: {', '.join(sorted(ch.VARIANTS))}")
    ap.add_argument("--sizes", default="88,177,354,0", help="train images per point (0 = all)")
    ap.add_argument("--seeds", default="0", type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--data", type=Path, default=ch.SHARED / "coco-persons")
    ap.add_argument("--work", type=Path, default=Path("/tmp/roiseg_compare_heads"))
    ap.add_argument("--plot", type=Path, required=True)
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args(argv)
    points = [point(args, v, int(n)) for v in args.variants for n in args.sizes.split(",")]
    points.sort(key=lambda p: (args.variants.index(p["variant"]), p["images"]))
    seeds = f"{len(args.seeds)} seed{'s' if len(args.seeds) > 1 else ''}"
    plot(points, f"heads with the defaults ({seeds}), {args.detector}", args.plot)
    rows = ["| head | train images | target IoU | boundary IoU | mask AP | whole-box floor |",
            "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| {p['variant']} | {p['images']} | {p['target_iou']:.4f} | {p['target_boundary_iou']:.4f} | "
             f"{p['mask_ap']:.4f} | {p['box_floor_target_iou']:.4f} |" for p in points]
    text = "\n".join(rows) + "\n"
    print(text)
    ch.write_text(args.markdown, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
