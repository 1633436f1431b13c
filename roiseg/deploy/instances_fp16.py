"""Parity of a float16 instance model (``roiseg fuse --instances --fp16``) with the float32 references.

Float16 moves the detector's features (by ~5 % of their mean magnitude on yolox_nano), so a detection
near the score threshold may appear or vanish and a box may shift by a few pixels: the detections
cannot be compared one to one as for a float32 model. Instead, per image:

* the model's instances are matched to the reference's (:func:`roiseg.deploy.detections.reference_instances`
  on the float32 detector): reference best first, each to the unmatched instance of the same class
  with the highest box IoU, if ``>= MATCH_IOU``;
* its masks are compared with the float32 ROI model run on the model's own boxes (float16 parity
  statistics, :class:`graph_tools.ErrorStats`, pooled over the images).

Pass: matched / reference and matched / model instances (pooled) both ``>= MIN_MATCHED``; per mask
output the float16 tolerances of ROI parity (mean abs ``<= FP16_PARITY_MEAN_ATOL``, argmax agreement
``>= FP16_PARITY_MIN_ARGMAX``); thresholds held on every image.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torchvision

from graph_tools import ErrorStats
from roiseg.conventions import (
    FP16_PARITY_ATOL, FP16_PARITY_MEAN_ATOL, FP16_PARITY_MIN_ARGMAX, FUSED_LABELS_OUTPUT, FUSED_MASKS_OUTPUT, TARGET,
)
from roiseg.deploy.detections import Instances

MATCH_IOU: float = 0.5
"""Smallest box IoU (same class) at which a float16 instance counts as the reference's."""
MIN_MATCHED: float = 0.95
"""Smallest fraction of matched instances, of the reference's and of the model's (pooled over the images)."""


def match_instances(got: Instances, ref: Instances, min_iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(got index, ref index, IoU)``: the reference best first, each to the unmatched
    ``got`` instance of its class with the highest IoU (boxes normalised x1y1x2y2), if ``>= min_iou``."""
    if not len(got.scores) or not len(ref.scores):
        return []
    iou = torchvision.ops.box_iou(torch.from_numpy(ref.boxes), torch.from_numpy(got.boxes)).numpy()
    iou[ref.classes[:, None] != got.classes[None, :]] = 0.0
    pairs, taken = [], set()
    for r in np.argsort(-ref.scores, kind="stable"):
        free = [g for g in np.argsort(-iou[r], kind="stable") if g not in taken and iou[r, g] >= min_iou]
        if free:
            taken.add(int(free[0]))
            pairs.append((int(free[0]), int(r), float(iou[r, free[0]])))
    return pairs


class Fp16InstanceCheck:
    """Accumulates the per-image rows and the pooled mask statistics of a float16 instance model."""

    def __init__(self, mask_names: Sequence[str], atol: float = FP16_PARITY_ATOL) -> None:
        self.atol, self.rows = atol, []
        self.masks = {name: ErrorStats(name, f"float16 instance model vs float32 ROI model on its boxes: {name}",
                                       positive_class=TARGET, probabilities=name == FUSED_MASKS_OUTPUT,
                                       labels=name == FUSED_LABELS_OUTPUT) for name in mask_names}

    def add(self, image: str, got: Instances, ref: Instances, masks: dict[str, np.ndarray],
            roi_masks: dict[str, np.ndarray], thresholds_held: bool) -> dict[str, Any]:
        """Compare one image; ``masks``/``roi_masks``: each mask output of the model and of the ROI model."""
        pairs = match_instances(got, ref)
        diff = [abs(float(got.scores[g]) - float(ref.scores[r])) for g, r, _ in pairs]
        for name, stats in self.masks.items():
            if len(masks[name]):
                stats.update(roi_masks[name], masks[name])
        row = {"image": image, "count": int(len(got.scores)), "reference_count": int(len(ref.scores)),
               "matched": len(pairs), "mean_iou": float(np.mean([p[2] for p in pairs])) if pairs else 1.0,
               "score_max_abs": max(diff, default=0.0), "thresholds_held": thresholds_held,
               "passed": thresholds_held}
        self.rows.append(row)
        return row

    def report(self) -> dict[str, Any]:
        """The pooled figures and ``passed`` (see the module docstring)."""
        matched = sum(r["matched"] for r in self.rows)
        ref, got = sum(r["reference_count"] for r in self.rows), sum(r["count"] for r in self.rows)
        recall, precision = matched / ref if ref else 1.0, matched / got if got else 1.0
        masks = {name: s.result(self.atol, FP16_PARITY_MIN_ARGMAX, FP16_PARITY_MEAN_ATOL) if s.count else
                 {"elements": 0, "passed": True} for name, s in self.masks.items()}
        passed = (bool(self.rows) and recall >= MIN_MATCHED and precision >= MIN_MATCHED
                  and all(m["passed"] for m in masks.values()) and all(r["passed"] for r in self.rows))
        return {"images": self.rows, "fp16": True, "matched_of_reference": recall, "matched_of_model": precision,
                "match_iou": MATCH_IOU, "min_matched": MIN_MATCHED, "masks": masks, "passed": passed}


def format_fp16_table(report: dict[str, Any]) -> str:
    """The per-image table ``roiseg parity-check`` prints for a float16 instance model."""
    head = f"{'image':<22} {'K':>4} {'ref K':>6} {'matched':>8} {'mean IoU':>9} {'score max abs':>14}  result"
    lines = [head, "-" * len(head)]
    for r in report["images"]:
        lines.append(f"{r['image'][:22]:<22} {r['count']:>4} {r['reference_count']:>6} {r['matched']:>8} "
                     f"{r['mean_iou']:>9.4f} {r['score_max_abs']:>14.2e}  {'PASS' if r['passed'] else 'FAIL'}"
                     f"{'' if r['thresholds_held'] else ' (thresholds not held)'}")
    for name, m in report["masks"].items():
        agree = f", argmax {100 * m['argmax_agreement']:.3f}%" if "argmax_agreement" in m else ""
        mean = f"mean abs {m['mean_abs']:.2e}" if "mean_abs" in m else f"{m['elements']} elements"
        lines.append(f"{name}: {mean}{agree}: {'PASS' if m['passed'] else 'FAIL'}")
    lines.append(f"{len(report['images'])} image(s); matched (IoU >= {report['match_iou']:g}, same class) "
                 f"{100 * report['matched_of_reference']:.1f}% of the reference's, {100 * report['matched_of_model']:.1f}% "
                 f"of the model's instances (>= {100 * report['min_matched']:.0f}%); masks mean abs <= "
                 f"{FP16_PARITY_MEAN_ATOL:g}, argmax >= {100 * FP16_PARITY_MIN_ARGMAX:.0f}% (float16 model): "
                 f"{'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)
