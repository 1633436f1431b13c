"""Evaluate a ROI mask model on a COCO person set at each image's original resolution.

The ROI evaluator of :mod:`roiseg.evaluation.loop` behind ``roiseg evaluate`` on a ROI model (a fused
ONNX model is a :class:`~roiseg.runtime.session.FusedSession`, a checkpoint a
:class:`~roiseg.evaluation.torch_model.TorchMaskModel`; both are :class:`MaskModel`)::

    evaluate(model: MaskModel, annotations: str | Path, images_dir: str | Path, *,
             max_images: int | None = None, workers: int = 2, worst: int = 0,
             dilation_ratio: float = 0.02, show_progress: bool = True) -> Evaluation

    Evaluation.report: dict   # JSON-ready; see below
    Evaluation.worst: list[WorstRoi]   # the ``worst`` ROIs of lowest target IoU, lowest first
                                       # (WorstRoi: roiseg.evaluation.report, crops for the picture)

Output: :func:`roiseg.evaluation.report.format_table`, ``write_report_json``,
``write_markdown`` and ``write_worst_picture`` (all files written atomically).

What is evaluated. Persons are selected by :func:`roiseg.data.prepare.select_persons` (person
category, images with a crowd person dropped, unusable annotations skipped); ``max_images`` keeps
the first N selected images. Each person's COCO bbox (clipped to the image) is one ROI. Images are
read and prepared in ``workers`` threads; a missing, unreadable or wrongly sized image is skipped
with a warning and counted (:mod:`roiseg.evaluation.loop`). Per image the model gets its image feed
and all its ROIs; each ROI's ``[3, H, W]`` probabilities come back at the original ``(H0, W0)`` as
``predict`` brings them (:func:`roiseg.runtime.session.to_original_size`: bilinear, then argmax). Ground truth per ROI:
:func:`roiseg.data.targets.roi_targets` of the instance masks at original resolution (target =
the ROI's own person, non-target = other persons, both only inside the ROI). The prediction is
*not* cut to the ROI: what the model paints outside counts as false positive.

Figures (``report["figures"][name][bucket]`` = ``{"mean", "rois"}`` for bucket ``all``, each
COCO size bucket of the annotation area, and :data:`ROI_GROUPS`: ``crowded`` — the ROIs whose ground truth
holds other persons' pixels inside the box, what the non-target class is for — and ``alone``, the others;
``mean`` ``None`` when no ROI counts):

* ``target_iou``: mean per-ROI IoU of predicted vs true target pixels; ROIs with an empty union
  skipped (:mod:`roiseg.metrics.numpy_masks`, the same figures as the training validation's).
* ``box_floor_target_iou``: the same for the prediction "the whole box is the target" through the
  model's input grid: the ROI's pixels by the centre rule on the ``input_hw`` grid, resized
  bilinearly to ``(H0, W0)``, ``> 0.5``. The floor a head must beat.
* ``target_boundary_iou``: mean per-ROI Boundary IoU (Cheng et al. 2021) of the target masks,
  boundary width ``max(1, round(dilation_ratio * diagonal of the original image))``.
* ``non_target_iou``: mean per-ROI IoU of the non-target class over the ROIs whose ground truth
  holds other persons' pixels.

``report["mask_ap"]``: COCO mask ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``
(:mod:`roiseg.metrics.coco_ap`; one detection per ROI, scored by the mean target probability inside
its predicted mask). Also in the report: counts of images (selected / evaluated / skipped by
reason), dropped images and skipped annotations of the selection, ``num_rois``, timing, and one
record per ROI (``report["rois"]``).

Errors (:class:`roiseg.errors.InputError`, nothing written): unreadable annotation file, no person
to evaluate, no image that could be read, a model output that is not ``[N, 3, H, W]`` with one
mask per ROI at the model's input size (or the image's, for a raw-image model).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from roiseg.conventions import (NON_TARGET, NUM_CLASSES, TARGET, coco_bbox_to_roi, roi_inside_mask,
                                size_bucket)
from roiseg.data.coco import decode_mask, load_coco_json, segmentation_to_rle
from roiseg.data.prepare import PersonSelection, select_persons
from roiseg.data.targets import roi_targets
from roiseg.errors import InputError
from roiseg.evaluation.loop import evaluate_dataset
from roiseg.evaluation.report import COLUMNS, ROI_GROUPS, WorstRoi, crop_worst_roi
from roiseg.metrics.coco_ap import coco_mask_ap, detection
from roiseg.metrics.numpy_masks import (
    DEFAULT_DILATION_RATIO, boundary_dilation, boundary_intersection_union, class_intersection_union,
    intersection_union, iou, per_roi_confusion,
)
from roiseg.runtime.session import to_original_size

FIGURES: tuple[str, ...] = ("target_iou", "box_floor_target_iou", "target_boundary_iou", "non_target_iou")
"""Per-ROI figures of the report, in table order (module docstring)."""


@runtime_checkable
class MaskModel(Protocol):
    """What :func:`evaluate` needs from a model (a fused ONNX model or a checkpoint + extractor).

    ``input_hw``: model input ``(H, W)`` pixels (the whole-box floor is drawn on it).
    ``image_feed(image_bgr)``: the model's input for an [H0, W0, 3] uint8 BGR image (called in worker threads).
    ``roi_probabilities(feed, rois)``: ``rois`` [N, 4] float32 normalised ``x1, y1, x2, y2`` -> [N, 3, H, W]
    float32 class probabilities (background, target, non-target) at the input size (or at ``(H0, W0)``).
    """

    input_hw: tuple[int, int]

    def image_feed(self, image_bgr: np.ndarray) -> Any: ...

    def roi_probabilities(self, feed: Any, rois: np.ndarray) -> np.ndarray: ...


@dataclass
class Evaluation:
    """Result of :func:`evaluate`: the JSON-ready ``report`` and the ``worst`` ROIs (lowest IoU first)."""

    report: dict[str, Any]
    worst: list[WorstRoi] = field(default_factory=list)


@dataclass
class _Item:
    """One read image, prepared by a worker thread."""

    image_bgr: np.ndarray  # [H0, W0, 3] uint8
    feed: Any  # the model's input
    rois: np.ndarray  # [N, 4] normalised
    truth: np.ndarray  # [N, H0, W0] uint8 class ids
    box_floor: np.ndarray  # [N, H0, W0] bool


def _annotation_area(ann: dict, image_hw: tuple[int, int]) -> float:
    """COCO ``area`` of an annotation; the area of its mask when the file has none."""
    if "area" in ann:
        return float(ann["area"])
    return float(mask_utils.area(segmentation_to_rle(ann["segmentation"], image_hw, ann["id"])))


def box_floor_masks(rois: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """[N, H0, W0] bool "whole box is target": centre-rule box on ``input_hw``, bilinear to ``orig_hw``, > 0.5."""
    h0, w0 = orig_hw
    out = np.empty((len(rois), h0, w0), dtype=bool)
    for k, roi in enumerate(rois):
        box = roi_inside_mask(roi, input_hw).astype(np.float32)
        out[k] = cv2.resize(box, (w0, h0), interpolation=cv2.INTER_LINEAR) > 0.5
    return out


def _check_output(probs: Any, n: int, sizes: tuple[tuple[int, int], tuple[int, int]], file_name: str) -> np.ndarray:
    """``probs`` as float32 [N, 3, H, W] at one of ``sizes`` (the input's, the image's); InputError otherwise."""
    arr = np.asarray(probs, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1] != NUM_CLASSES:
        raise InputError(f"{file_name}: the model returned shape {list(arr.shape)}; expected [N, {NUM_CLASSES}, H, W]")
    if arr.shape[0] != n:
        raise InputError(f"{file_name}: the model returned {arr.shape[0]} masks for {n} ROIs")
    if tuple(arr.shape[2:]) not in sizes:
        raise InputError(f"{file_name}: the model returned {arr.shape[2]}x{arr.shape[3]} masks; its input is "
                         f"{sizes[0][0]}x{sizes[0][1]}")
    return arr


def _support(mask: np.ndarray) -> tuple[slice, slice]:
    """Row and column slices of the bounding box of a non-empty [H, W] bool mask (empty: 0:0)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def roi_figures(labels: np.ndarray, truth: np.ndarray, box_floor: np.ndarray, dilation: int) -> dict[str, float]:
    """Per-ROI figures (module docstring) of one ROI; NaN = not counted.

    ``labels``/``truth``: [H0, W0] uint8 class ids; ``box_floor``: [H0, W0] bool; ``dilation``:
    boundary width in pixels. Computed on the bounding box of everything not background in the
    three (exact: outside it all are background, and the boundary code pads with background).
    """
    sl = _support((labels != 0) | (truth != 0) | box_floor)
    pred, true = labels[sl][None], truth[sl][None]
    conf = per_roi_confusion(pred, true)
    true_t = true == TARGET
    has_others = int(conf[0, NON_TARGET, :].sum()) > 0
    return {
        "target_iou": float(iou(*class_intersection_union(conf, TARGET))[0]),
        "box_floor_target_iou": float(iou(*intersection_union(box_floor[sl][None], true_t))[0]),
        "target_boundary_iou": float(iou(*boundary_intersection_union(pred == TARGET, true_t, dilation))[0]),
        "non_target_iou": float(iou(*class_intersection_union(conf, NON_TARGET))[0]) if has_others else float("nan"),
    }


def roi_group(record: dict[str, Any]) -> str:
    """``crowded`` or ``alone`` (:data:`ROI_GROUPS`) of a per-ROI record, by its ``others_inside`` (the ground truth
    holds other persons' pixels inside the box: :func:`roi_figures`)."""
    return ROI_GROUPS[0] if record["others_inside"] else ROI_GROUPS[1]


class _Accumulator:
    """Per-ROI records, COCO detections and the running ``worst`` heap of one run."""

    def __init__(self, worst: int) -> None:
        self.rois: list[dict[str, Any]] = []
        self.detections: list[dict] = []
        self.gt_images: list[dict] = []
        self.gt_anns: list[dict] = []
        self.worst = max(0, int(worst))
        self._heap: list[tuple[float, int, WorstRoi]] = []  # (-iou, seq, roi): heap[0] = best kept

    def add_image(self, img: dict, anns: list[dict], item: _Item, labels: np.ndarray, target_prob: np.ndarray,
                  dilation: int) -> None:
        """One image's ROIs: ``labels`` [N, H0, W0] class ids, ``target_prob`` [N, H0, W0], boundary ``dilation``."""
        self.gt_images.append(img)
        for k, ann in enumerate(anns):
            self.gt_anns.append(ann)
            det = detection(img["id"], labels[k] == TARGET, target_prob[k])
            if det is not None:
                self.detections.append(det)
            figures = roi_figures(labels[k], item.truth[k], item.box_floor[k], dilation)
            values = {name: _float_or_none(figures[name]) for name in FIGURES}
            self.rois.append({"image_id": img["id"], "file_name": img["file_name"], "ann_id": ann["id"],
                              "area": float(ann["area"]), "bucket": size_bucket(float(ann["area"])),
                              "others_inside": bool(not np.isnan(figures["non_target_iou"])),
                              "score": None if det is None else det["score"], **values})
            t = values["target_iou"]
            if self.worst and t is not None and (len(self._heap) < self.worst or t < -self._heap[0][0]):
                roi = crop_worst_roi(img, ann["id"], item.rois[k], item.image_bgr, item.truth[k], labels[k], t,
                                     figures["target_boundary_iou"])
                entry = (-t, len(self.rois), roi)
                if len(self._heap) < self.worst:
                    heapq.heappush(self._heap, entry)
                else:
                    heapq.heapreplace(self._heap, entry)

    def worst_rois(self) -> list[WorstRoi]:
        return [e[2] for e in sorted(self._heap, key=lambda e: (-e[0], e[1]))]


def _float_or_none(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def bucket_means(rois: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """``{"all" | size bucket | ROI group: {"mean": mean of the non-None ``name`` values or None, "rois": count}}``
    (:data:`ROI_GROUPS`, :func:`roi_group`)."""
    out = {}
    for bucket in COLUMNS:
        vals = [r[name] for r in rois if r[name] is not None and bucket in ("all", r["bucket"], roi_group(r))]
        out[bucket] = {"mean": float(np.mean(vals)) if vals else None, "rois": len(vals)}
    return out


class RoiEvaluator:
    """The ROI evaluation (module docstring) as an :class:`~roiseg.evaluation.loop.Evaluator`."""

    def __init__(self, model: MaskModel, annotations: Path, max_images: int | None, worst: int,
                 dilation_ratio: float) -> None:
        if dilation_ratio <= 0:
            raise InputError(f"dilation ratio must be > 0, got {dilation_ratio}")
        self.model, self.dilation_ratio = model, float(dilation_ratio)
        self.input_hw = (int(model.input_hw[0]), int(model.input_hw[1]))
        self.selection: PersonSelection = select_persons(load_coco_json(annotations), annotations)
        images = self.selection.images if max_images is None else self.selection.images[: max(0, int(max_images))]
        if not images:
            raise InputError(f"{annotations}: no image with a usable (non-crowd) person annotation to evaluate")
        by_image = self.selection.by_image()
        self.anns = {img["id"]: [{**a, "area": _annotation_area(a, (img["height"], img["width"]))}
                                 for a in by_image[img["id"]]] for img in images}
        self.images = images
        self.acc = _Accumulator(worst)

    def records(self) -> list[dict]:
        return self.images

    def prepare(self, record: dict, image_bgr: np.ndarray) -> _Item:
        """The model's feed, the ROIs, the ground truth and the box floor of one image (in a worker)."""
        anns, hw = self.anns[record["id"]], (int(record["height"]), int(record["width"]))
        try:
            masks = np.stack([decode_mask(a["segmentation"], hw, None, a["id"]) for a in anns])
        except ValueError as exc:
            raise InputError(f"{record['file_name']}: {exc}") from exc
        rois = np.clip(np.stack([coco_bbox_to_roi(a["bbox"], hw) for a in anns]), 0.0, 1.0).astype(np.float32)
        return _Item(image_bgr, self.model.image_feed(image_bgr), rois, roi_targets(masks, rois),
                     box_floor_masks(rois, self.input_hw, hw))

    def process(self, record: dict, item: _Item) -> None:
        hw = item.truth.shape[1:]
        probs = _check_output(self.model.roi_probabilities(item.feed, item.rois), len(item.rois),
                              (self.input_hw, tuple(hw)), record["file_name"])
        target_prob, labels = to_original_size(probs, hw, keep=(TARGET,))
        self.acc.add_image(record, self.anns[record["id"]], item, labels, target_prob[:, 0],
                           boundary_dilation(hw, self.dilation_ratio))

    def summarize(self) -> dict[str, Any]:
        acc = self.acc
        return {"input_hw": list(self.input_hw), "dilation_ratio": self.dilation_ratio,
                "dropped_images": dict(self.selection.dropped_images), "skipped_annotations": dict(self.selection.skipped),
                "num_rois": len(acc.rois), "unscored_rois": unscored_rois(acc.rois),
                "mask_source": getattr(self.model, "mask_source", "probs"),
                "figures": {name: bucket_means(acc.rois, name) for name in FIGURES},
                "mask_ap": coco_mask_ap(acc.gt_images, acc.gt_anns, acc.detections), "rois": acc.rois}


def unscored_rois(records: list[dict[str, Any]]) -> int:
    """ROIs without a target IoU: no target pixel inside the box and none predicted (an empty union),
    e.g. a box off the image or around a person outside it; counted, not averaged."""
    return sum(1 for r in records if not np.isfinite(r["target_iou"]))


def evaluate(model: MaskModel, annotations: str | Path, images_dir: str | Path, *, max_images: int | None = None,
             workers: int = 2, worst: int = 0, dilation_ratio: float = DEFAULT_DILATION_RATIO,
             show_progress: bool = True) -> Evaluation:
    """Evaluate ``model`` on the persons of ``annotations`` (module docstring); nothing is written.

    ``images_dir``: folder of the images named in the file. ``max_images``: first N selected images.
    ``workers``: image-decoding threads (0 = in this thread). ``worst``: keep the K ROIs of lowest
    target IoU for :func:`roiseg.evaluation.report.write_worst_picture`. ``dilation_ratio``:
    Boundary IoU width as a fraction of the image diagonal.
    """
    if not Path(images_dir).is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    evaluator = RoiEvaluator(model, Path(annotations), max_images, worst, dilation_ratio)
    report = evaluate_dataset(evaluator, annotations, images_dir, workers=workers, show_progress=show_progress)
    return Evaluation(report=report, worst=evaluator.acc.worst_rois())


__all__ = ["Evaluation", "FIGURES", "MaskModel", "RoiEvaluator", "box_floor_masks", "bucket_means", "evaluate",
           "roi_figures", "roi_group"]
