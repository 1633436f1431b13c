"""``roiseg predict``: run a fused model on an image with pixel ROIs; overlay and masks at the original size."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.conventions import DEFAULT_PREDICT_OVERLAY, DEVICE_CHOICES
from roiseg.utils.progress import get_logger

DEFAULT_OVERLAY = DEFAULT_PREDICT_OVERLAY
LOG = get_logger("roiseg.commands.predict")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment the persons in given boxes of an image with the fused model (or every person an "
             "instance model finds)",
        description=(
            "ROIs are pixel boxes x1,y1,x2,y2 of the original image (or normalised 0..1 boxes with --normalized; "
            "negative numbers work as --roi -50,-50,100,100); they are clipped to the image (with a "
            "warning), empty ones are refused; they are numbered from 1. Every output path is checked before "
            "any work. The image is preprocessed as the model's metadata says; "
            "masks are resized back to the original size (bilinear probabilities, then argmax). An instance model "
            "(fuse --instances) takes no --roi: every person it detects is drawn with its mask and score."
        ),
    )
    p.add_argument("--model", type=Path, required=True,
                   help="fused ONNX written by roiseg fuse (an instance model, fuse --instances, finds the persons "
                        "itself: no --roi)")
    p.add_argument("--image", type=Path, default=None, help="image file")
    p.add_argument("--source", default=None, metavar="PATH|GLOB|CAMERA",
                   help="a stream instead of --image: an image, a folder, a glob ('frames/*.jpg'), a video file or a "
                        "camera index (0); overlays go to --out (a video for a video or camera, else a folder)")
    p.add_argument("--rois-json", type=Path, default=None, metavar="FILE",
                   help="with --source and a ROI model: its boxes, a COCO instances file (matched by file name) or "
                        "detection results (matched by image_id: the file name's number or the frame index)")
    p.add_argument("--save-json", type=Path, default=None, metavar="FILE",
                   help="with --source: COCO results (RLE masks, scores) for pycocotools' loadRes; FILE.partial "
                        "holds the results so far while it runs")
    p.add_argument("--roi", action="append", default=None, metavar="X1,Y1,X2,Y2",
                   help="ROI in pixels of the original image (repeatable; a ROI model needs at least one)")
    p.add_argument("--normalized", action="store_true",
                   help="the --roi numbers are normalised to [0, 1] (fractions of the width and height)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"overlay picture (default {DEFAULT_OVERLAY}); with --source a video file (.mp4, .avi) or a folder")
    p.add_argument("--save-masks", type=Path, default=None, metavar="DIR",
                   help="also write per-ROI class-id and target PNGs into the folder DIR")
    p.add_argument("--device", default="auto", help=f"onnxruntime device: {', '.join(DEVICE_CHOICES)}, cuda:N (default auto)")
    p.add_argument("--trt-rois", default="1,8,64", metavar="MIN,OPT,MAX",
                   help="ROI counts of the TensorRT optimisation profile (default 1,8,64; used with TensorRT only)")
    p.set_defaults(func=run)


def _trt_rois(text: str) -> tuple[int, int, int]:
    """``MIN,OPT,MAX`` -> the TensorRT ROI profile (:func:`roiseg.runtime.engines.check_trt_rois`)."""
    from roiseg.errors import InputError
    from roiseg.runtime.engines import check_trt_rois

    try:
        return check_trt_rois([int(v) for v in text.split(",")])
    except (ValueError, InputError):
        raise InputError(f"--trt-rois must be three integers MIN,OPT,MAX with 1 <= MIN <= OPT <= MAX, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from roiseg.conventions import NON_TARGET, TARGET
    from roiseg.errors import InputError
    from roiseg.runtime.instances import is_instance_model
    from roiseg.runtime.predict import parse_roi, predict_image

    trt_rois = _trt_rois(args.trt_rois)
    if (args.image is None) == (args.source is None):
        raise InputError("give an --image, or a --source (folder, glob, video, camera index)")
    if args.source is not None:
        return _run_stream(args)
    if args.rois_json is not None or args.save_json is not None:
        raise InputError("--rois-json and --save-json go with --source")
    args.out = Path(DEFAULT_OVERLAY) if args.out is None else args.out
    if is_instance_model(args.model):
        if args.roi or args.normalized:
            raise InputError(f"{args.model} is an instance model: it finds the persons itself; --roi and --normalized "
                             "are for a ROI model")
        return _run_instances(args)
    if not args.roi:
        raise InputError(f"{args.model} is a ROI model: give at least one --roi X1,Y1,X2,Y2 (pixels of the image)")
    rois = [parse_roi(r) for r in args.roi]
    if not args.normalized and max(max(r) for r in rois) <= 1.0:
        LOG.warning("every --roi coordinate is <= 1: these are pixels of the image, so the box is at most 1 pixel; "
                    "if they are fractions of the image size, pass --normalized")
    pred, written = predict_image(args.model, args.image, rois, out=args.out, masks_dir=args.save_masks,
                                  device=args.device, normalized=args.normalized, trt_rois=trt_rois)
    h, w = pred.labels.shape[1:]
    print(f"{len(pred.rois_px)} ROI(s) on {args.image} ({w}x{h})")
    for i, (box, labels) in enumerate(zip(pred.rois_px, pred.labels), start=1):
        box_text = ",".join(f"{v:g}" for v in box)
        print(f"  #{i} box {box_text}: target {(labels == TARGET).sum()} px, non-target {(labels == NON_TARGET).sum()} px")
    for path in written:
        print(f"wrote {path}")
    return 0


def _run_stream(args: argparse.Namespace) -> int:
    from roiseg.errors import InputError
    from roiseg.runtime.stream import run_stream

    if args.roi or args.normalized or args.save_masks:
        raise InputError("--roi, --normalized and --save-masks are for one --image; a stream's boxes come from --rois-json")
    summary = run_stream(args.model, args.source, args.out, args.save_json, args.rois_json, args.device)
    state = "interrupted after" if summary.interrupted else "ran"
    print(f"{state} {summary.frames} frame(s) of {args.source} at {summary.fps:.2f} frames/s; {summary.results} mask(s)")
    overlays = [p for p in summary.written if p != args.save_json]
    if overlays:
        print(f"wrote {overlays[0] if len(overlays) == 1 else f'{len(overlays)} overlays to {args.out}'}")
    if args.save_json is not None:
        print(f"wrote {args.save_json}")
    return 130 if summary.interrupted else 0


def _run_instances(args: argparse.Namespace) -> int:
    from roiseg.conventions import NON_TARGET, TARGET
    from roiseg.runtime.instances import predict_instances

    pred, written = predict_instances(args.model, args.image, out=args.out, masks_dir=args.save_masks, device=args.device)
    if len(pred.scores) == 0:
        print(f"no person detected on {args.image}")
    else:
        h, w = pred.labels.shape[1:]
        print(f"{len(pred.scores)} person(s) detected on {args.image} ({w}x{h})")
    for i, (box, score, cls, labels) in enumerate(zip(pred.rois_px, pred.scores, pred.classes, pred.labels), start=1):
        box_text = ",".join(f"{v:.1f}" for v in box)
        print(f"  #{i} score {score:.3f} class {int(cls)} box {box_text}: target {(labels == TARGET).sum()} px, "
              f"non-target {(labels == NON_TARGET).sum()} px")
    for path in written:
        print(f"wrote {path}")
    return 0

