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
            "whole-box floor, target boundary IoU, non-target IoU, COCO mask AP, by COCO size bucket. With --rois "
            "detector an instance model (fuse --instances) is scored with its own detections: COCO mask AP over "
            "every image of the file, crowd regions ignored."
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
    p.add_argument("--rois", default="gt", choices=ROI_SOURCES,
                   help="gt (default): the ground-truth person boxes, per-ROI figures; detector: an instance model "
                        "(fuse --instances) with its own detections, scored with COCO mask AP (every detection a "
                        "result with its score; crowd regions ignored as COCO does)")
    p.set_defaults(func=run)


def _outputs(args: argparse.Namespace) -> list[Path]:
    outs = [args.report, args.markdown, args.worst_picture if args.worst > 0 else None]
    return [p for p in outs if p is not None]


def run(args: argparse.Namespace) -> int:
    from roiseg.deploy.evaluate import evaluate
    from roiseg.deploy.evaluate_report import format_table, write_markdown, write_report_json, write_worst_picture
    from roiseg.deploy.mask_models import load_mask_model
    from roiseg.errors import InputError
    from roiseg.utils.atomic import check_output_file

    if args.max_images is not None and args.max_images < 1:
        raise InputError(f"--max-images must be >= 1, got {args.max_images}")
    if args.worst < 0 or args.workers < 0:
        raise InputError("--worst and --workers must be >= 0")
    for out in _outputs(args):  # refuse unwritable outputs before any work
        check_output_file(out)
    if args.rois == "detector":
        return _run_detector(args)
    if args.model.suffix.lower() == ".onnx":
        from roiseg.deploy.predict_instances import is_instance_model

        if is_instance_model(args.model):
            raise InputError(f"{args.model} is an instance model: it finds its own boxes; evaluate it with --rois detector")
    model = load_mask_model(args.model, args.detector, args.feature_tensor, args.device)
    result = evaluate(model, args.annotations, args.images, max_images=args.max_images, workers=args.workers,
                      worst=args.worst, dilation_ratio=args.dilation_ratio)
    print(f"model: {model.description}")
    print(format_table(result.report))
    if args.report is not None:
        print(f"wrote {write_report_json(args.report, result.report)}")
    if args.markdown is not None:
        print(f"wrote {write_markdown(args.markdown, result.report)}")
    if args.worst > 0:
        print(f"wrote {write_worst_picture(args.worst_picture, result.worst)}")
    return 0


def _run_detector(args: argparse.Namespace) -> int:
    from roiseg.deploy.evaluate_instances import evaluate_instances, format_instance_table, write_instance_markdown
    from roiseg.deploy.evaluate_report import write_report_json
    from roiseg.deploy.predict_instances import InstanceSession
    from roiseg.errors import InputError

    if args.model.suffix.lower() != ".onnx" or args.detector is not None:
        raise InputError("--rois detector evaluates an instance model ONNX (roiseg fuse --instances); "
                         "a checkpoint with --extractor has no detections")
    if args.worst > 0:
        raise InputError("--worst draws the ROIs of lowest target IoU, a per-ROI figure that --rois detector has not")
    session = InstanceSession(args.model, args.device)
    report = evaluate_instances(session, args.annotations, args.images, max_images=args.max_images, workers=args.workers)
    print(f"model: instance model {args.model.name}")
    print(format_instance_table(report))
    if args.report is not None:
        print(f"wrote {write_report_json(args.report, report)}")
    if args.markdown is not None:
        print(f"wrote {write_instance_markdown(args.markdown, report)}")
    return 0

