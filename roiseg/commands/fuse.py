"""``roiseg fuse``: detector ONNX + trained head -> one ONNX model (``images`` + ``rois`` -> ``masks``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.conventions import DEFAULT_FUSED_MODEL, DEFAULT_OUTPUTS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fuse",
        help="trim the detector at the feature tensor and splice the head into one ONNX model",
        description=(
            "Cut the detector ONNX at the feature tensor, export the head (native RoiAlign, half_pixel), "
            "reconcile opset/IR versions, splice both into one model with inputs images + rois and output "
            "masks [N,3,H,W], check it with onnx.checker, simplify it with onnxslim or onnxsim (kept only when it "
            "matches the unsimplified model on real boxes) and write it."
        ),
    )
    p.add_argument("--yolo", "--detector", dest="detector", type=Path, required=True,
                   help="detector ONNX (any detector: full model or featext model)")
    p.add_argument("--head", type=Path, required=True, help="roiseg checkpoint (.pth) or head ONNX exported by roiseg")
    p.add_argument("--feature-tensor", default=None,
                   help="tensor the head reads (default: the tensor recorded with the head)")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_FUSED_MODEL), help=f"output ONNX (default {DEFAULT_FUSED_MODEL})")
    p.add_argument("--opset", type=int, default=None,
                   help="opset of the fused model (>= 16; default: the higher of the detector's and the head's)")
    p.add_argument("--no-simplify", action="store_true", help="do not simplify (onnxslim, onnxsim)")
    p.add_argument("--strict", action="store_true",
                   help="refuse a head trained on another detector file (sha256 mismatch) instead of warning")
    p.add_argument("--check-image", type=Path, action="append", default=None, metavar="IMG",
                   help="image to verify the simplified model on (repeatable; default: a synthetic image)")
    p.add_argument("--outputs", nargs="+", default=None, metavar="MODE",
                   help="output modes, several allowed (space or comma separated): probs (default: masks "
                        "[N,3,H,W] probabilities), labels (uint8 [N,H,W] argmax), target (float32 [N,H,W] target "
                        "probability), roi_logits (roi_logits [N,3,M,M] + roi_boxes [N,4], to paste yourself)")
    p.add_argument("--image-input", default="tensor", metavar="MODE",
                   help="tensor (default: images [1,3,H,W] preprocessed by the caller) or raw (image uint8 "
                        "[H0,W0,3] BGR of any size, preprocessed in the graph; masks at H0 x W0)")
    p.add_argument("--fp16", action="store_true",
                   help="compute in float16 where safe (detector and head convolutions); RoiAlign, box geometry, "
                        "normalisations and quantization ops stay float32; inputs and outputs float32")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from roiseg.deploy.fuse import fuse
    from roiseg.deploy.probes import read_probe_image
    from roiseg.utils.atomic import check_output_file

    check_output_file(args.out)  # refuse a folder or an unwritable place before any work
    for image in args.check_image or []:
        read_probe_image(image)  # absent, truncated or corrupt: stop now, naming the file
    report = fuse(args.detector, args.head, feature_tensor=args.feature_tensor, out=args.out, opset=args.opset,
                  simplify=not args.no_simplify, strict=args.strict, check_images=args.check_image,
                  outputs=args.outputs or DEFAULT_OUTPUTS, fp16=args.fp16,
                  image_input=args.image_input)
    print(report.summary())
    return 0
