"""Parity of a float16 instance model (``roiseg fuse --instances --fp16``) with the float32 references.

Float16 moves the detector's features (by ~5 % of their mean magnitude on yolox_nano), so a detection
near the score threshold may appear or vanish and a box may shift by a few pixels: the detections
cannot be compared one to one as for a float32 model (:class:`roiseg.verify.instances.ExactInstances`).
Instead, per image:

* the model's instances are matched to the reference's (:func:`roiseg.detection.reference.reference_instances`
  on the float32 detector): reference best first, each to the unmatched instance of the same class
  with the highest box IoU, if ``>= MATCH_IOU``;
* its masks are compared with the float32 ROI model run on the model's own boxes (float16 parity
  statistics, pooled over the images).

Pass: matched / reference and matched / model instances (pooled) both ``>= MIN_MATCHED``; per mask
output the float16 tolerances of ROI parity (mean abs ``<= FP16_PARITY_MEAN_ATOL``, argmax agreement
``>= FP16_PARITY_MIN_ARGMAX``); thresholds held on every image (:mod:`roiseg.verify.tolerances`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from roiseg.detection.formats import Instances
from roiseg.verify.stats import output_stats, stage_result
from roiseg.verify.table import Column, format_rows, verdict
from roiseg.verify.tolerances import (
    FP16_PARITY_ATOL, FP16_PARITY_MEAN_ATOL, FP16_PARITY_MIN_ARGMAX, MATCH_IOU, MIN_MATCHED,
)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[A, B] IoU of [A, 4] and [B, 4] x1y1x2y2 boxes (0 where the union is empty)."""
    lo, hi = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0.0, None), axis=1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_instances(got: Instances, ref: Instances, min_iou: float = MATCH_IOU) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(got index, ref index, IoU)``: the reference best first, each to the unmatched
    ``got`` instance of its class with the highest IoU (boxes normalised x1y1x2y2), if ``>= min_iou``."""
    if not len(got.scores) or not len(ref.scores):
        return []
    iou = box_iou(ref.boxes.astype(np.float32), got.boxes.astype(np.float32))
    iou[ref.classes[:, None] != got.classes[None, :]] = 0.0
    pairs, taken = [], set()
    for r in np.argsort(-ref.scores, kind="stable"):
        free = [g for g in np.argsort(-iou[r], kind="stable") if g not in taken and iou[r, g] >= min_iou]
        if free:
            taken.add(int(free[0]))
            pairs.append((int(free[0]), int(r), float(iou[r, free[0]])))
    return pairs


class Fp16Instances:
    """The float16 instance comparison: per-image rows and pooled mask statistics (module docstring)."""

    KIND = "instances_fp16"
    COLUMNS = (
        Column("image", 22, lambda r: r["image"][:22], left=True), Column("K", 4, lambda r: str(r["count"])),
        Column("ref K", 6, lambda r: str(r["reference_count"])), Column("matched", 8, lambda r: str(r["matched"])),
        Column("mean IoU", 9, lambda r: f"{r['mean_iou']:.4f}"),
        Column("score max abs", 14, lambda r: f"{r['score_max_abs']:.2e}"),
        Column("result", 0, lambda r: verdict(r["passed"]) + ("" if r["thresholds_held"] else " (thresholds not held)"),
               gap=2),
    )

    def __init__(self, mask_names: Sequence[str], atol: float = FP16_PARITY_ATOL) -> None:
        self.atol, self.rows = atol, []
        self.masks = {name: output_stats(name, f"float16 instance model vs float32 ROI model on its boxes: {name}", name)
                      for name in mask_names}

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
        masks = {name: stage_result(s, self.atol, FP16_PARITY_MIN_ARGMAX, FP16_PARITY_MEAN_ATOL) if s.count else
                 {"elements": 0, "passed": True} for name, s in self.masks.items()}
        passed = (bool(self.rows) and recall >= MIN_MATCHED and precision >= MIN_MATCHED
                  and all(m["passed"] for m in masks.values()) and all(r["passed"] for r in self.rows))
        return {"kind": self.KIND, "images": self.rows, "fp16": True, "matched_of_reference": recall,
                "matched_of_model": precision, "match_iou": MATCH_IOU, "min_matched": MIN_MATCHED, "masks": masks,
                "passed": passed}

    @classmethod
    def table(cls, report: dict[str, Any]) -> str:
        """The per-image table ``roiseg parity-check`` prints for a float16 instance model."""
        footer = []
        for name, m in report["masks"].items():
            agree = f", argmax {100 * m['argmax_agreement']:.3f}%" if "argmax_agreement" in m else ""
            mean = f"mean abs {m['mean_abs']:.2e}" if "mean_abs" in m else f"{m['elements']} elements"
            footer.append(f"{name}: {mean}{agree}: {verdict(m['passed'])}")
        footer.append(f"{len(report['images'])} image(s); matched (IoU >= {report['match_iou']:g}, same class) "
                      f"{100 * report['matched_of_reference']:.1f}% of the reference's, "
                      f"{100 * report['matched_of_model']:.1f}% of the model's instances (>= "
                      f"{100 * report['min_matched']:.0f}%); masks mean abs <= {FP16_PARITY_MEAN_ATOL:g}, argmax >= "
                      f"{100 * FP16_PARITY_MIN_ARGMAX:.0f}% (float16 model): {verdict(report['passed'])}")
        return format_rows(cls.COLUMNS, report["images"], footer)

    @staticmethod
    def failures(report: dict[str, Any]) -> str:
        """One line naming what fell short."""
        why = [f"{name}: {'mean abs' if 'mean_abs' in m else 'masks'} outside float16 tolerance"
               for name, m in report["masks"].items() if not m["passed"]]
        for key, what in (("matched_of_reference", "of the reference's"), ("matched_of_model", "of the model's")):
            if report[key] < report["min_matched"]:
                why.append(f"matched {100 * report[key]:.1f}% {what} instances")
        why += [f"{r['image']}: thresholds not held" for r in report["images"] if not r["thresholds_held"]]
        return "; ".join(why) or "no image compared"
