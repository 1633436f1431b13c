"""``roiseg parity-check``: the fused ONNX model vs the PyTorch path, stage by stage, on real images."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.conventions import DEFAULT_PARITY_REPORT
from roiseg.verify.tolerances import (
    FP16_PARITY_ATOL, FP16_PARITY_MEAN_ATOL, FP16_PARITY_MIN_ARGMAX, PARITY_ATOL, PARITY_MIN_ARGMAX,
)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "parity-check",
        help="compare the fused ONNX model with detector ONNX features + the head in PyTorch",
        description=(
            "Run the fused model in onnxruntime and the PyTorch path (features from the original detector "
            "ONNX through onnxruntime, head in torch) on real images with GT boxes and edge-case ROIs. "
            "Reports per stage (trim, simplify, fused) max/mean/p99 absolute and max relative error, argmax "
            "agreement and target-mask IoU. Exit 0 within tolerance, 1 otherwise. An instance model (--fused, "
            "built with fuse --instances) is checked per image instead: its boxes, scores and classes against the "
            "Python reference on the detector's output, its masks against the ROI model built here with its boxes "
            "(needs --images)."
        ),
    )
    p.add_argument("--fused", type=Path, default=None,
                   help="fused ONNX (default: build it from --yolo and --head into a temporary file, as fuse does)")
    p.add_argument("--yolo", "--detector", dest="detector", type=Path, required=True,
                   help="the detector ONNX the fused model was built from")
    p.add_argument("--head", type=Path, required=True, help="the roiseg checkpoint the fused model was built from")
    p.add_argument("--feature-tensor", default=None,
                   help="tensor the head reads, when building here (default: the checkpoint's)")
    p.add_argument("--annotations", type=Path, default=None, help="COCO instances JSON with person boxes (needs --images)")
    p.add_argument("--images", type=Path, default=None, help="folder of the images")
    p.add_argument("--max-images", type=int, default=None, help="use at most this many images")
    p.add_argument("--atol", type=float, default=None,
                   help=f"max absolute error on probabilities (default {PARITY_ATOL:g}; float16 model: "
                        f"{FP16_PARITY_ATOL:g}, i.e. none)")
    p.add_argument("--min-argmax", type=float, default=None,
                   help=f"min fraction of pixels whose argmax class agrees (default {PARITY_MIN_ARGMAX}; "
                        f"float16 model: {FP16_PARITY_MIN_ARGMAX})")
    p.add_argument("--engine", default="onnxruntime", metavar="ENGINE",
                   help="what runs the fused model: onnxruntime (default) or openvino (CPU, f32 precision; "
                        "optional dependency group: uv sync --group openvino)")
    p.add_argument("--mean-atol", type=float, default=None,
                   help=f"max mean absolute error (default: none; float16 model: {FP16_PARITY_MEAN_ATOL:g})")
    p.add_argument("--report", type=Path, default=Path(DEFAULT_PARITY_REPORT),
                   help=f"JSON report (default {DEFAULT_PARITY_REPORT})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from roiseg.verify.parity import failure_summary, format_table, run_parity
    from roiseg.errors import CheckFailed, InputError
    from roiseg.utils.atomic import check_output_file, write_json
    from roiseg.utils.memory import map_large_blocks

    if args.max_images is not None and args.max_images < 1:
        raise InputError(f"--max-images must be >= 1, got {args.max_images}")
    for flag, value in (("--atol", args.atol), ("--mean-atol", args.mean_atol)):
        if value is not None and not value >= 0:
            raise InputError(f"{flag} must be >= 0, got {value:g}")
    if args.min_argmax is not None and not 0 <= args.min_argmax <= 1:
        raise InputError(f"--min-argmax must be a fraction in [0, 1], got {args.min_argmax:g}")
    check_output_file(args.report)  # before any work
    map_large_blocks()  # outputs of every ROI set are freed back to the OS, not kept resident
    report = run_parity(args.detector, args.head, fused=args.fused, annotations=args.annotations, images=args.images,
                        atol=args.atol, min_argmax=args.min_argmax, max_images=args.max_images,
                        feature_tensor=args.feature_tensor, mean_atol=args.mean_atol,
                        engine=args.engine)
    print(format_table(report))
    write_json(args.report, report)
    print(f"wrote {args.report}")
    if not report["passed"]:
        raise CheckFailed(f"parity outside tolerance: {failure_summary(report)}")
    return 0
