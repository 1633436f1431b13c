"""``roiseg fuse-instances``: detector ONNX + trained head -> one ONNX model ``images`` -> person
instances (``boxes``, ``scores``, ``classes``, masks), with the detector's own boxes and NMS in the graph.

:func:`add_instance_arguments` and :func:`instance_params` are the detection options, for any
command that builds or reads an instance model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.conventions import (
    DEFAULT_FUSED_MODEL, DEFAULT_IOU_THRESHOLD, DEFAULT_MAX_INSTANCES, DEFAULT_OUTPUTS, DEFAULT_PERSON_CLASSES,
    DEFAULT_SCORE_THRESHOLD, DETECTION_FORMATS,
)


def _class_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"class ids are whole numbers separated by commas, got {text!r}") from None


def add_instance_arguments(p: argparse.ArgumentParser) -> None:
    """``--detections``, ``--det-format``, ``--person-classes``, ``--score-threshold``, ``--iou-threshold``, ``--max-instances``."""
    p.add_argument("--detections", default=None, metavar="TENSOR",
                   help="the detector's detection tensor (default: the one output shaped like detections)")
    p.add_argument("--det-format", default=None, choices=DETECTION_FORMATS,
                   help="ultralytics [1,4+nc,A] cxcywh pixels + class scores; yolox [1,A,5+nc] grid outputs (or "
                        "decoded), objectness x class score; nms [K,7] batchno,classid,score,x1,y1,x2,y2 "
                        "(default: from the tensor's shape and the model's metadata)")
    p.add_argument("--person-classes", type=_class_ids, default=list(DEFAULT_PERSON_CLASSES), metavar="IDS",
                   help="detector class ids that are persons, comma separated (default 0)")
    p.add_argument("--score-threshold", type=float, default=DEFAULT_SCORE_THRESHOLD,
                   help=f"keep detections scoring above this (default {DEFAULT_SCORE_THRESHOLD})")
    p.add_argument("--iou-threshold", type=float, default=DEFAULT_IOU_THRESHOLD,
                   help=f"NMS: suppress a detection overlapping a better one by more (default {DEFAULT_IOU_THRESHOLD})")
    p.add_argument("--max-instances", type=int, default=DEFAULT_MAX_INSTANCES,
                   help=f"at most this many instances, the best (default {DEFAULT_MAX_INSTANCES})")


def instance_params(args: argparse.Namespace):
    """The :class:`roiseg.deploy.detections.InstanceParams` of :func:`add_instance_arguments`' options."""
    from roiseg.deploy.detections import InstanceParams

    return InstanceParams(tuple(args.person_classes), args.score_threshold, args.iou_threshold, args.max_instances)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fuse-instances",
        help="one ONNX model from an image to person instances: detector boxes, NMS and masks",
        description=(
            "Like fuse, but the model takes only images: the detector's detection output is decoded in the "
            "graph, person classes kept, score-thresholded, suppressed with NonMaxSuppression and capped; the "
            "boxes (normalised x1y1x2y2) feed the head. Outputs boxes [K,4], scores [K], classes [K] and the "
            "masks [K,3,H,W]; K = 0 works."
        ),
    )
    p.add_argument("--yolo", "--detector", dest="detector", type=Path, required=True,
                   help="full detector ONNX (with its detection output)")
    p.add_argument("--head", type=Path, required=True, help="roiseg checkpoint (.pth) or head ONNX exported by roiseg")
    p.add_argument("--feature-tensor", default=None, help="tensor the head reads (default: the one recorded with the head)")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_FUSED_MODEL), help=f"output ONNX (default {DEFAULT_FUSED_MODEL})")
    p.add_argument("--opset", type=int, default=None, help="opset of the model (>= 16)")
    p.add_argument("--no-simplify", action="store_true", help="do not simplify (onnxslim, onnxsim)")
    p.add_argument("--strict", action="store_true", help="refuse a head trained on another detector file")
    p.add_argument("--check-image", type=Path, action="append", default=None, metavar="IMG",
                   help="image to verify the simplified model on (repeatable; default: a synthetic image)")
    p.add_argument("--outputs", nargs="+", default=None, metavar="MODE", help="mask output modes, as for fuse")
    add_instance_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from roiseg.deploy.instances import fuse_instances
    from roiseg.deploy.probes import read_probe_image
    from roiseg.utils.atomic import check_output_file

    check_output_file(args.out)
    for image in args.check_image or []:
        read_probe_image(image)
    report = fuse_instances(
        args.detector, args.head, args.out, detections=args.detections, det_format=args.det_format,
        params=instance_params(args), feature_tensor=args.feature_tensor, opset=args.opset,
        simplify=not args.no_simplify, strict=args.strict, check_images=args.check_image,
        outputs=args.outputs or DEFAULT_OUTPUTS,
    )
    print(report.summary())
    return 0
