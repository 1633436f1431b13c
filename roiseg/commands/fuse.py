"""``roiseg fuse``: detector ONNX + trained head -> one ONNX model (``images`` + ``rois`` -> ``masks``);
with ``--instances`` the model takes only the image and finds the persons itself (``boxes``, ``scores``,
``classes`` and the masks), the detector's own boxes and NMS in the graph.

:func:`add_instance_arguments` and :func:`instance_options` are the detection options.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.conventions import (
    DEFAULT_FUSED_MODEL, DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_INSTANCES, DEFAULT_OUTPUTS, DEFAULT_PERSON_CLASSES,
    DEFAULT_SCORE_THRESHOLD,
)
from roiseg.detection.layouts import DETECTION_FORMATS


def _class_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"class ids are whole numbers separated by commas, got {text!r}") from None


def _preprocessing(text: str):
    """``COLOR,SCALE`` (``bgr,1``, ``rgb,1/255``) -> ``conventions.Preprocessing``."""
    from roiseg.conventions import Preprocessing

    parts = [t.strip() for t in text.split(",")]
    try:
        num, _, den = parts[1].partition("/")
        scale = float(num) / float(den or 1)
    except (IndexError, ValueError, ZeroDivisionError):
        scale = 0.0
    if len(parts) != 2 or parts[0] not in ("rgb", "bgr") or not scale > 0:
        raise argparse.ArgumentTypeError(f"expected COLOR,SCALE with COLOR rgb or bgr and SCALE > 0 "
                                         f"(e.g. bgr,1 or rgb,1/255), got {text!r}")
    return Preprocessing(color=parts[0], scale=scale)


def add_instance_arguments(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """``--detections``, ``--det-format``, ``--person-classes``, ``--score-threshold``, ``--iou-threshold``,
    ``--max-instances``, ``--det-preprocessing``; returns their actions (flag, ``dest``, default)."""
    return [
        p.add_argument("--detections", default=None, metavar="TENSOR",
                       help="with --instances: the detector's detection tensor (default: the one output shaped like "
                            "detections)"),
        p.add_argument("--det-format", default=None, choices=DETECTION_FORMATS,
                       help="with --instances: ultralytics [1,4+nc,A] cxcywh pixels + class scores; yolox [1,A,5+nc] "
                            "grid outputs (or decoded), objectness x class score; yolov5 [1,3A,5+nc] decoded boxes (YOLOv5/v7), "
                            "objectness x class score; nms [K,7] "
                            "batchno,classid,score,x1,y1,x2,y2; end2end [1,K,6] x1,y1,x2,y2,score,classid (YOLOv10, "
                            "YOLO26, Ultralytics nms=True exports; no NMS applied) (default: from the tensor's shape and "
                            "the model's metadata)"),
        p.add_argument("--person-classes", type=_class_ids, default=list(DEFAULT_PERSON_CLASSES), metavar="IDS",
                       help="with --instances: detector class ids that are persons, comma separated (default 0)"),
        p.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                       help=f"with --instances: keep detections scoring above this (default {DEFAULT_SCORE_THRESHOLD})"),
        p.add_argument("--iou-threshold", type=float, default=DEFAULT_IOU_THRESHOLD,
                       help="with --instances: NMS suppresses a detection overlapping a better one by more "
                            f"(default {DEFAULT_IOU_THRESHOLD})"),
        p.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES,
                       help=f"with --instances: at most this many instances, the best (default {DEFAULT_MAX_INSTANCES})"),
        p.add_argument("--det-preprocessing", type=_preprocessing, default=None, metavar="COLOR,SCALE",
                       help="with --instances: the preprocessing the detector wants when the head was trained with "
                            "another one, e.g. bgr,1 for YOLOX under a head trained on rgb,1/255 (default: the head's); "
                            "the detection path is then a second detector copy fed by the converted image"),
    ]


def instance_options(args: argparse.Namespace):
    """The :class:`roiseg.export.options.InstanceOptions` of :func:`add_instance_arguments`' options."""
    from roiseg.detection.formats import InstanceParams
    from roiseg.export.options import InstanceOptions

    params = InstanceParams(tuple(args.person_classes), args.score_threshold, args.iou_threshold, args.max_instances)
    return InstanceOptions(detections=args.detections, det_format=args.det_format, params=params,
                           det_preprocessing=args.det_preprocessing)


def given_instance_flags(args: argparse.Namespace) -> list[str]:
    """The detection options given with other values than their defaults, as their flags."""
    actions = add_instance_arguments(argparse.ArgumentParser())
    return [a.option_strings[0] for a in actions if getattr(args, a.dest) != a.default]


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
    p.add_argument("--int8", default=None, choices=("head", "all"),
                   help="static int8 quantization (QDQ, per-channel, symmetric; TensorRT parses it): the head's "
                        "convolutions, or all: the detector's too but its first (the stem) and depthwise ones "
                        "(not when it is quantized already); MatMuls, RoiAlign, Resize, the softmaxes and the "
                        "paste stay float; needs --calibration-images")
    p.add_argument("--calibration-images", type=Path, default=None, metavar="DIR",
                   help="folder of real images to calibrate the int8 ranges on")
    p.add_argument("--calibration-count", type=int, default=32, metavar="N",
                   help="calibration images used, the first N in name order (default 32)")
    p.add_argument("--instances", action="store_true",
                   help="an instance model: input only the image; the detector's detections are decoded, "
                        "thresholded, suppressed (NonMaxSuppression) and capped in the graph and feed the head; "
                        "outputs boxes [K,4] (normalised x1y1x2y2; pixels with --image-input raw), scores [K], "
                        "classes [K] and the masks [K,...]; K = 0 works (see docs/instances.md)")
    add_instance_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from roiseg.conventions import read_user_image
    from roiseg.errors import InputError
    from roiseg.export.options import FuseOptions
    from roiseg.utils.atomic import check_output_file

    given = given_instance_flags(args)
    if given and not args.instances:
        raise InputError(f"{', '.join(given)}: detection options, for an instance model (add --instances)")
    check_output_file(args.out)  # refuse a folder or an unwritable place before any work
    for image in args.check_image or []:
        read_user_image(image)  # absent, truncated or corrupt: stop now, naming the file
    options = FuseOptions(feature_tensor=args.feature_tensor, opset=args.opset, strict=args.strict,
                          outputs=args.outputs or DEFAULT_OUTPUTS, image_input=args.image_input,
                          simplify=not args.no_simplify, check_images=args.check_image, fp16=args.fp16,
                          int8=args.int8, calibration_images=args.calibration_images,
                          calibration_count=args.calibration_count)
    if args.int8 and args.instances:
        raise InputError("--int8 is for ROI models for now; quantize the ROI model (without --instances)")
    if (args.calibration_images is not None) != bool(args.int8):
        raise InputError("--int8 and --calibration-images go together")
    if args.instances:
        from roiseg.export.instances import fuse_instances

        report = fuse_instances(args.detector, args.head, args.out, options, instance_options(args))
    else:
        from roiseg.export.fuse import fuse

        report = fuse(args.detector, args.head, args.out, options)
    print(report.summary())
    return 0
