"""``roiseg predict``: run a fused model on an image with pixel ROIs; overlay and masks at the original size."""

from __future__ import annotations

import argparse
from pathlib import Path

from roiseg.conventions import DEVICE_CHOICES

DEFAULT_OVERLAY = "overlay.png"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment the persons in given boxes of an image with the fused model",
        description=(
            "ROIs are pixel boxes x1,y1,x2,y2 of the original image; they are clipped to the image (with a "
            "warning), empty ones are refused. The image is preprocessed as the model's metadata says; "
            "masks are resized back to the original size (bilinear probabilities, then argmax)."
        ),
    )
    p.add_argument("--model", type=Path, required=True, help="fused ONNX written by roiseg fuse")
    p.add_argument("--image", type=Path, required=True, help="image file")
    p.add_argument("--roi", action="append", required=True, metavar="X1,Y1,X2,Y2",
                   help="ROI in pixels of the original image (repeatable)")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OVERLAY), help=f"overlay picture (default {DEFAULT_OVERLAY})")
    p.add_argument("--save-masks", type=Path, default=None, metavar="DIR",
                   help="also write per-ROI class-id and target PNGs into DIR")
    p.add_argument("--device", default="auto", help=f"onnxruntime device: {', '.join(DEVICE_CHOICES)}, cuda:N (default auto)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from roiseg.conventions import NON_TARGET, TARGET
    from roiseg.deploy.predict import parse_roi, predict_image

    rois = [parse_roi(r) for r in args.roi]
    pred, written = predict_image(args.model, args.image, rois, out=args.out, masks_dir=args.save_masks,
                                  device=args.device)
    h, w = pred.labels.shape[1:]
    print(f"{len(pred.rois_px)} ROI(s) on {args.image} ({w}x{h})")
    for i, (box, labels) in enumerate(zip(pred.rois_px, pred.labels)):
        box_text = ",".join(f"{v:g}" for v in box)
        print(f"  #{i} box {box_text}: target {(labels == TARGET).sum()} px, non-target {(labels == NON_TARGET).sum()} px")
    for path in written:
        print(f"wrote {path}")
    return 0
