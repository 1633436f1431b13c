"""``roiseg evaluate``: accuracy of a fused model (or a checkpoint) at each image's original resolution."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.conventions import DEVICE_CHOICES, EVALUATE_WORST_PICTURE

ROI_SOURCES: tuple[str, ...] = ("gt", "detector")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="mean per-ROI target IoU, boundary IoU and COCO mask AP at the original resolution",
        description=(
            "Run a fused ONNX model (or a checkpoint through the PyTorch path, with --extractor) on the "
            "ground-truth person boxes of a COCO file (no-crowd persons; images with a crowd person skipped) "
            "and compare the masks at each image's original resolution: mean per-ROI target IoU beside the "
            "whole-box floor, target boundary IoU, non-target IoU, COCO mask AP, by COCO size bucket and for the "
            "crowded ROIs (other persons inside the box) and the others. An instance model "
            "(fuse --instances, as its metadata says) is scored with its own detections: COCO mask AP over every "
            "image of the file, crowd regions ignored."
        ),
    )
    p.add_argument("--model", type=Path, required=True, help="fused ONNX model, or a roiseg checkpoint (.pth)")
    p.add_argument("--extractor", "--yolo", "--detector", dest="detector", type=Path, default=None,
                   help="detector ONNX (needed with a checkpoint: the PyTorch path reads its features)")
    p.add_argument("--feature-tensor", default=None, help="tensor the head reads (default: the checkpoint's)")
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON with person masks")
    p.add_argument("--images", type=Path, required=True, help="folder of the images")
    p.add_argument("--max-images", type=int, default=None, help="evaluate the first N selected images")
    p.add_argument("--workers", type=int, default=2, help="image-decoding threads (default 2)")
    p.add_argument("--dilation-ratio", type=float, default=0.02,
                   help="boundary width as a fraction of the image diagonal (default 0.02)")
    p.add_argument("--report", type=Path, default=None, help="write the full report as JSON")
    p.add_argument("--markdown", type=Path, default=None, help="write the figures as a Markdown table")
    p.add_argument("--worst", type=int, default=0, metavar="K", help="draw the K ROIs of lowest target IoU")
    p.add_argument("--worst-picture", type=Path, default=Path(EVALUATE_WORST_PICTURE),
                   help=f"file of the --worst picture (default {EVALUATE_WORST_PICTURE})")
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICE_CHOICES)} or cuda:N (default auto)")
    p.add_argument("--rois", default=None, choices=ROI_SOURCES,
                   help="where the boxes come from (default: from the model's metadata): gt, the ground-truth person "
                        "boxes with per-ROI figures (a ROI model, or a checkpoint); detector, an instance model's own "
                        "detections scored with COCO mask AP (every detection a result with its score; crowd regions "
                        "ignored as COCO does)")
    p.set_defaults(func=run)


def _outputs(args: argparse.Namespace) -> list[Path]:
    outs = [args.report, args.markdown, args.worst_picture if args.worst > 0 else None]
    return [p for p in outs if p is not None]


def _source(args: argparse.Namespace) -> str:
    """``gt`` or ``detector``: ``--rois`` when given, else from the model (an instance model: detector).
    InputError when the model cannot be evaluated that way."""
    from roiseg.errors import InputError
    from roiseg.runtime.instances import is_instance_model

    onnx_model = args.model.suffix.lower() == ".onnx"
    instance = onnx_model and is_instance_model(args.model)
    source = args.rois or ("detector" if instance else "gt")
    if source == "gt" and instance:
        raise InputError(f"{args.model} is an instance model: it finds its own boxes; evaluate it without --rois gt")
    if source == "detector":
        if not onnx_model or args.detector is not None:
            raise InputError("--rois detector evaluates an instance model ONNX (roiseg fuse --instances); "
                             "a checkpoint with --extractor has no detections")
        if not instance:
            raise InputError(f"{args.model} is a ROI model (images + rois): it has no detections of its own; "
                             "evaluate it on the ground-truth boxes (--rois gt)")
        if args.worst > 0:
            raise InputError("--worst draws the ROIs of lowest target IoU, a per-ROI figure that an instance "
                             "model's evaluation has not")
    return source


def run(args: argparse.Namespace) -> int:
    from roiseg.errors import InputError
    from roiseg.evaluation.report import format_report, write_outputs
    from roiseg.utils.atomic import check_output_file

    if args.max_images is not None and args.max_images < 1:
        raise InputError(f"--max-images must be >= 1, got {args.max_images}")
    if args.worst < 0 or args.workers < 0:
        raise InputError("--worst and --workers must be >= 0")
    for out in _outputs(args):  # refuse unwritable outputs before any work
        check_output_file(out)
    common = {"max_images": args.max_images, "workers": args.workers}
    if _source(args) == "detector":
        from roiseg.evaluation.instances import evaluate_instances
        from roiseg.runtime.session import FusedSession

        model = FusedSession(args.model, args.device)
        report, worst = evaluate_instances(model, args.annotations, args.images, **common), []
    else:
        from roiseg.evaluation.models import load_mask_model
        from roiseg.evaluation.roi import evaluate

        model = load_mask_model(args.model, args.detector, args.feature_tensor, args.device)
        result = evaluate(model, args.annotations, args.images, worst=args.worst, dilation_ratio=args.dilation_ratio,
                          **common)
        report, worst = result.report, result.worst
    print(f"model: {model.description}")
    print(format_report(report))
    for path in write_outputs(report, worst, args.report, args.markdown, args.worst_picture if args.worst > 0 else None):
        print(f"wrote {path}")
    return 0
