"""int8 against float32: CPU time of the fused model at 1 and 8 ROIs, and accuracy with ``roiseg evaluate``.

From one checkpoint and its detector, ``roiseg fuse`` writes the float32 model and the ``--int8 head``
and ``--int8 all`` models (calibrated on ``--calibration-images``, the first ``--calibration-count``);
then, in one process, each model runs on one preprocessed photo with 1 and 8 plausible ROIs,
round-robin over ``--reps`` repetitions (median; onnxruntime CPU, default threads), and with
``--annotations/--images`` each is evaluated (mean per-ROI target IoU, boundary IoU, mask AP).

    uv run python bench/bench_int8.py --detector DET.onnx --head best.pth --calibration-images DIR \\
        [--annotations person_val.json --images DIR] [--reps 7]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path


from roiseg.conventions import read_image
from roiseg.export.probes import plausible_rois
from roiseg.runtime.session import FusedSession

sys.path.insert(0, str(Path(__file__).parent))
from timing import round_robin  # noqa: E402

MODELS = {"float32": [], "int8 head": ["--int8", "head"], "int8 all": ["--int8", "all"]}


def build(args: argparse.Namespace, root: Path) -> dict[str, Path]:
    out = {}
    for name, flags in MODELS.items():
        path = root / f"{name.replace(' ', '_')}.onnx"
        cal = ["--calibration-images", str(args.calibration_images), "--calibration-count", str(args.calibration_count)]
        subprocess.run([sys.executable, "-m", "roiseg", "fuse", "--yolo", str(args.detector), "--head", str(args.head),
                        "--out", str(path), *flags, *(cal if flags else [])], check=True, capture_output=True)
        out[name] = path
    return out


def timings(models: dict[str, Path], photo: Path, reps: int) -> dict[tuple[str, int], float]:
    sessions = {name: FusedSession(path, "cpu") for name, path in models.items()}
    image = read_image(photo)
    calls = {}
    for name, sess in sessions.items():
        feed = sess.image_feed(image)
        for n in (1, 8):
            rois = plausible_rois(n, seed=n)
            calls[(name, n)] = lambda sess=sess, feed=feed, rois=rois: sess.roi_probabilities(feed, rois)
    return round_robin(calls, reps)


def evaluate(model: Path, args: argparse.Namespace) -> dict:
    from roiseg.evaluation.models import load_mask_model
    from roiseg.evaluation.roi import evaluate as run

    report = run(load_mask_model(model, device="cpu"), args.annotations, args.images, show_progress=False).report
    return {"target IoU": report["figures"]["target_iou"]["all"]["mean"],
            "boundary IoU": report["figures"]["target_boundary_iou"]["all"]["mean"], "mask AP": report["mask_ap"]["AP"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", type=Path, required=True)
    ap.add_argument("--head", type=Path, required=True)
    ap.add_argument("--calibration-images", type=Path, required=True)
    ap.add_argument("--calibration-count", type=int, default=32)
    ap.add_argument("--photo", type=Path, default=None, help="image timed (default: the first calibration image)")
    ap.add_argument("--annotations", type=Path, default=None)
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    photo = args.photo or sorted(p for p in args.calibration_images.iterdir() if p.suffix.lower() in (".jpg", ".png"))[0]
    with tempfile.TemporaryDirectory(prefix="roiseg_bench_int8_") as tmp:
        models = build(args, Path(tmp))
        med = timings(models, photo, args.reps)
        figures = {name: evaluate(path, args) for name, path in models.items()} if args.annotations else {}
        sizes = {name: path.stat().st_size / 1e6 for name, path in models.items()}
    for name in MODELS:
        line = f"{name:<10} {sizes[name]:6.1f} MB  N=1 {1e3 * med[(name, 1)]:7.1f} ms  N=8 {1e3 * med[(name, 8)]:7.1f} ms"
        line += f"  speed-up N=1 {med[('float32', 1)] / med[(name, 1)]:.2f}x  N=8 {med[('float32', 8)] / med[(name, 8)]:.2f}x"
        if figures:
            line += "  " + "  ".join(f"{k} {v:.4f}" for k, v in figures[name].items())
        print(line)


if __name__ == "__main__":
    main()
