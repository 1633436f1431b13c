"""Evaluate a ROI mask model on a COCO person set at each image's original resolution.

The library behind ``roiseg evaluate`` (the CLI and the adapters for fused ONNX models and
checkpoints live elsewhere; they wrap a model as a :class:`MaskModel`)::

    evaluate(model: MaskModel, annotations: str | Path, images_dir: str | Path, *,
             max_images: int | None = None, workers: int = 2, worst: int = 0,
             dilation_ratio: float = 0.02, show_progress: bool = True) -> Evaluation

    Evaluation.report: dict   # JSON-ready; see below
    Evaluation.worst: list[WorstRoi]   # the ``worst`` ROIs of lowest target IoU, lowest first
                                       # (WorstRoi: roiseg.deploy.evaluate_report, crops for the picture)

Output: :func:`roiseg.deploy.evaluate_report.format_table`, ``write_report_json``,
``write_markdown`` and ``write_worst_picture`` (all files written atomically).

What is evaluated. Persons are selected by :func:`roiseg.data.prepare.select_persons` (person
category, images with a crowd person dropped, unusable annotations skipped); ``max_images`` keeps
the first N selected images. Each person's COCO bbox (clipped to the image) is one ROI. Images are
read and prepared in ``workers`` threads (OpenCV releases the GIL); a missing, unreadable or
wrongly sized image is skipped with a warning and counted. Per image the model gets the
preprocessed image and all its ROIs; each ROI's ``[3, H, W]`` probabilities are resized bilinearly
to the original ``(H0, W0)`` (``cv2.resize``, as ``predict``) and argmaxed. Ground truth per ROI:
:func:`roiseg.data.targets.roi_targets` of the instance masks at original resolution (target =
the ROI's own person, non-target = other persons, both only inside the ROI). The prediction is
*not* cut to the ROI: what the model paints outside counts as false positive.

Figures (``report["figures"][name][bucket]`` = ``{"mean", "rois"}`` for bucket ``all`` and each
COCO size bucket of the annotation area; ``mean`` ``None`` when no ROI counts):

* ``target_iou``: mean per-ROI IoU of predicted vs true target pixels; ROIs with an empty union
  skipped (:mod:`roiseg.metrics.masks`, as the training validation).
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
mask per ROI at the model's input size.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar, runtime_checkable

import cv2
import numpy as np
import torch
from pycocotools import mask as mask_utils

from roiseg.conventions import (
    NON_TARGET, NUM_CLASSES, SIZE_BUCKETS, TARGET, Preprocessing, coco_bbox_to_roi,
    preprocess, roi_inside_mask, size_bucket,
)
from roiseg.data.coco import decode_mask, load_coco_json, segmentation_to_rle
from roiseg.data.prepare import select_persons
from roiseg.data.targets import roi_targets
from roiseg.deploy.evaluate_report import WorstRoi, crop_worst_roi
from roiseg.errors import InputError
from roiseg.metrics.coco_ap import coco_mask_ap, detection
from roiseg.metrics.masks import (
    DEFAULT_DILATION_RATIO, boundary_dilation, boundary_intersection_union, class_intersection_union,
    intersection_union, iou, per_roi_confusion, single_threaded,
)
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)

FIGURES: tuple[str, ...] = ("target_iou", "box_floor_target_iou", "target_boundary_iou", "non_target_iou")
"""Per-ROI figures of the report, in table order (module docstring)."""
SKIP_REASONS: tuple[str, ...] = ("missing", "unreadable", "size_mismatch")
T = TypeVar("T")
R = TypeVar("R")


@runtime_checkable
class MaskModel(Protocol):
    """What :func:`evaluate` needs from a model (a fused ONNX model or a checkpoint + extractor).

    ``input_hw``: model input ``(H, W)``; ``preprocessing``: how an image becomes the input.
    ``predict(image, rois)``: ``image`` [1, 3, H, W] float32 (:func:`roiseg.conventions.preprocess`),
    ``rois`` [N, 4] float32 normalised ``x1, y1, x2, y2`` -> [N, 3, H, W] float32 class
    probabilities (background, target, non-target) at the input size.
    """

    input_hw: tuple[int, int]
    preprocessing: Preprocessing

    def predict(self, image: np.ndarray, rois: np.ndarray) -> np.ndarray: ...


@dataclass
class Evaluation:
    """Result of :func:`evaluate`: the JSON-ready ``report`` and the ``worst`` ROIs (lowest IoU first)."""

    report: dict[str, Any]
    worst: list[WorstRoi] = field(default_factory=list)


@dataclass
class _Item:
    """One selected image, prepared by a worker thread (``status`` "ok" or a skip reason)."""

    record: dict
    anns: list[dict]
    status: str = "ok"
    image_bgr: np.ndarray | None = None
    model_input: np.ndarray | None = None  # [1, 3, H, W]
    rois: np.ndarray | None = None  # [N, 4] normalised
    truth: np.ndarray | None = None  # [N, H0, W0] uint8 class ids
    box_floor: np.ndarray | None = None  # [N, H0, W0] bool


# --------------------------------------------------------------------------------------------
# Selection and image preparation (worker threads)
# --------------------------------------------------------------------------------------------
def _annotation_area(ann: dict, image_hw: tuple[int, int]) -> float:
    """COCO ``area`` of an annotation; the area of its mask when the file has none."""
    if "area" in ann:
        return float(ann["area"])
    return float(mask_utils.area(segmentation_to_rle(ann["segmentation"], image_hw, ann["id"])))


def _select(annotations: Path, max_images: int | None) -> tuple[list[tuple[dict, list[dict]]], Any]:
    """``[(image record, [person annotation with area, ...]), ...]`` to evaluate, and the selection."""
    selection = select_persons(load_coco_json(annotations), annotations)
    images = selection.images if max_images is None else selection.images[: max(0, int(max_images))]
    if not images:
        raise InputError(f"{annotations}: no image with a usable (non-crowd) person annotation to evaluate")
    by_image = selection.by_image()
    items = []
    for img in images:
        hw = (img["height"], img["width"])
        items.append((img, [{**a, "area": _annotation_area(a, hw)} for a in by_image[img["id"]]]))
    return items, selection


def box_floor_masks(rois: np.ndarray, input_hw: tuple[int, int], orig_hw: tuple[int, int]) -> np.ndarray:
    """[N, H0, W0] bool "whole box is target": centre-rule box on ``input_hw``, bilinear to ``orig_hw``, > 0.5."""
    h0, w0 = orig_hw
    out = np.empty((len(rois), h0, w0), dtype=bool)
    for k, roi in enumerate(rois):
        box = roi_inside_mask(roi, input_hw).astype(np.float32)
        out[k] = cv2.resize(box, (w0, h0), interpolation=cv2.INTER_LINEAR) > 0.5
    return out


def _prepare(item: tuple[dict, list[dict]], images_dir: Path, input_hw: tuple[int, int], pre: Preprocessing) -> _Item:
    """Read and preprocess one image, rasterise its ground truth and box floor (in a worker)."""
    img, anns = item
    out = _Item(record=img, anns=anns)
    path = images_dir / img["file_name"]
    hw = (int(img["height"]), int(img["width"]))
    if not path.is_file():
        out.status = "missing"
        return out
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        out.status = "unreadable"
        return out
    if image.shape[:2] != hw:
        out.status = "size_mismatch"
        return out
    try:
        masks = np.stack([decode_mask(a["segmentation"], hw, None, a["id"]) for a in anns])
    except ValueError as exc:
        raise InputError(f"{img['file_name']}: {exc}") from exc
    rois = np.clip(np.stack([coco_bbox_to_roi(a["bbox"], hw) for a in anns]), 0.0, 1.0).astype(np.float32)
    out.image_bgr, out.rois = image, rois
    out.model_input = preprocess(image, input_hw, pre)
    out.truth = roi_targets(masks, rois)
    out.box_floor = box_floor_masks(rois, input_hw, hw)
    return out


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` in order, computed ahead by ``workers`` threads (at most ``depth`` results
    waiting, default ``2 * workers``); ``workers <= 0`` runs in the calling thread."""
    if workers <= 0:
        yield from map(fn, items)
        return
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="roiseg-eval") as pool:
        pending: deque[Future] = deque(pool.submit(fn, x) for x in islice(it, depth or 2 * workers))
        try:
            while pending:
                result = pending.popleft().result()
                for x in islice(it, 1):
                    pending.append(pool.submit(fn, x))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


# --------------------------------------------------------------------------------------------
# Model output and per-ROI figures (main thread)
# --------------------------------------------------------------------------------------------
def _check_output(probs: Any, n: int, input_hw: tuple[int, int], file_name: str) -> np.ndarray:
    arr = np.asarray(probs, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1] != NUM_CLASSES:
        raise InputError(f"{file_name}: the model returned shape {list(arr.shape)}; expected [N, {NUM_CLASSES}, H, W]")
    if arr.shape[0] != n:
        raise InputError(f"{file_name}: the model returned {arr.shape[0]} masks for {n} ROIs")
    if tuple(arr.shape[2:]) != tuple(input_hw):
        raise InputError(f"{file_name}: the model returned {arr.shape[2]}x{arr.shape[3]} masks; its input is "
                         f"{input_hw[0]}x{input_hw[1]}")
    return arr


def probabilities_to_original(probs: np.ndarray, orig_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3, H, W] -> ([N, H0, W0] uint8 argmax labels, [N, H0, W0] float32 target probability).

    Each ROI's maps are resized bilinearly with ``cv2.resize`` (as ``predict``), then argmaxed
    (the first class wins a tie, as ``np.argmax``; done by comparisons, 3x faster on [H, W, 3]).
    """
    h0, w0 = orig_hw
    labels = np.zeros((len(probs), h0, w0), dtype=np.uint8)
    target = np.empty((len(probs), h0, w0), dtype=np.float32)
    for k in range(len(probs)):
        hwk = cv2.resize(np.ascontiguousarray(probs[k].transpose(1, 2, 0)), (w0, h0), interpolation=cv2.INTER_LINEAR)
        hwk = hwk.reshape(h0, w0, -1)
        best = hwk[:, :, 0].copy()
        for c in range(1, hwk.shape[2]):
            labels[k][hwk[:, :, c] > best] = c
            np.maximum(best, hwk[:, :, c], out=best)
        target[k] = hwk[:, :, TARGET]
    return labels, target


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
    pred = torch.from_numpy(np.ascontiguousarray(labels[sl]))[None]
    true = torch.from_numpy(np.ascontiguousarray(truth[sl]))[None]
    conf = per_roi_confusion(pred, true)
    true_t = true == TARGET
    has_others = int(conf[0, NON_TARGET, :].sum()) > 0
    return {
        "target_iou": float(iou(*class_intersection_union(conf, TARGET))[0]),
        "box_floor_target_iou": float(iou(*intersection_union(torch.from_numpy(box_floor[sl])[None], true_t))[0]),
        "target_boundary_iou": float(iou(*boundary_intersection_union(pred == TARGET, true_t, dilation))[0]),
        "non_target_iou": float(iou(*class_intersection_union(conf, NON_TARGET))[0]) if has_others else float("nan"),
    }


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
class _Accumulator:
    """Per-ROI records, COCO detections and the running ``worst`` heap of one run."""

    def __init__(self, worst: int) -> None:
        self.rois: list[dict[str, Any]] = []
        self.detections: list[dict] = []
        self.gt_images: list[dict] = []
        self.gt_anns: list[dict] = []
        self.worst = max(0, int(worst))
        self._heap: list[tuple[float, int, WorstRoi]] = []  # (-iou, seq, roi): heap[0] = best kept

    def add_image(self, item: _Item, labels: np.ndarray, target_prob: np.ndarray, dilation: int) -> None:
        img = item.record
        self.gt_images.append(img)
        with single_threaded():  # small per-ROI tensors (roiseg.metrics.masks.single_threaded)
            self._add_rois(item, labels, target_prob, dilation)

    def _add_rois(self, item: _Item, labels: np.ndarray, target_prob: np.ndarray, dilation: int) -> None:
        img = item.record
        for k, ann in enumerate(item.anns):
            self.gt_anns.append(ann)
            det = detection(img["id"], labels[k] == TARGET, target_prob[k])
            if det is not None:
                self.detections.append(det)
            figures = roi_figures(labels[k], item.truth[k], item.box_floor[k], dilation)
            values = {name: _float_or_none(figures[name]) for name in FIGURES}
            self.rois.append({"image_id": img["id"], "file_name": img["file_name"], "ann_id": ann["id"],
                              "area": float(ann["area"]), "bucket": size_bucket(float(ann["area"])),
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
    """``{"all" | bucket: {"mean": mean of the non-None ``name`` values or None, "rois": count}}``."""
    out = {}
    for bucket in ("all", *SIZE_BUCKETS):
        vals = [r[name] for r in rois if r[name] is not None and bucket in ("all", r["bucket"])]
        out[bucket] = {"mean": float(np.mean(vals)) if vals else None, "rois": len(vals)}
    return out


def evaluate(
    model: MaskModel,
    annotations: str | Path,
    images_dir: str | Path,
    *,
    max_images: int | None = None,
    workers: int = 2,
    worst: int = 0,
    dilation_ratio: float = DEFAULT_DILATION_RATIO,
    show_progress: bool = True,
) -> Evaluation:
    """Evaluate ``model`` on the persons of ``annotations`` (module docstring); nothing is written.

    ``images_dir``: folder of the images named in the file. ``max_images``: first N selected images.
    ``workers``: image-decoding threads (0 = in this thread). ``worst``: keep the K ROIs of lowest
    target IoU for :func:`roiseg.deploy.evaluate_report.write_worst_picture`. ``dilation_ratio``:
    Boundary IoU width as a fraction of the image diagonal.
    """
    annotations, images_dir = Path(annotations), Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    if dilation_ratio <= 0:
        raise InputError(f"dilation ratio must be > 0, got {dilation_ratio}")
    input_hw = (int(model.input_hw[0]), int(model.input_hw[1]))
    items, selection = _select(annotations, max_images)
    acc, skipped = _Accumulator(worst), Counter()
    start = time.perf_counter()
    prepared = prefetch_map(lambda it: _prepare(it, images_dir, input_hw, model.preprocessing), items, workers)
    for item in progress(prepared, desc="evaluate", total=len(items), unit="img", disable=not show_progress):
        name = item.record["file_name"]
        if item.status != "ok":
            skipped[item.status] += 1
            LOG.warning("image id %s: %s is %s; skipped", item.record["id"], images_dir / name,
                        {"missing": "not on disk", "unreadable": "not a readable image",
                         "size_mismatch": "not the size the annotations give"}[item.status])
            continue
        probs = _check_output(model.predict(item.model_input, item.rois), len(item.rois), input_hw, name)
        labels, target_prob = probabilities_to_original(probs, item.truth.shape[1:])
        acc.add_image(item, labels, target_prob, boundary_dilation(item.truth.shape[1:], dilation_ratio))
    if not acc.gt_images:
        raise InputError(f"none of the {len(items)} selected images of {annotations} could be read from {images_dir}")
    report = {
        "annotations": str(annotations), "images_dir": str(images_dir), "input_hw": list(input_hw),
        "dilation_ratio": float(dilation_ratio),
        "images": {"selected": len(items), "evaluated": len(acc.gt_images),
                   "skipped": {r: int(skipped[r]) for r in SKIP_REASONS}},
        "dropped_images": dict(selection.dropped_images), "skipped_annotations": dict(selection.skipped),
        "num_rois": len(acc.rois),
        "figures": {name: bucket_means(acc.rois, name) for name in FIGURES},
        "mask_ap": coco_mask_ap(acc.gt_images, acc.gt_anns, acc.detections),
        "rois": acc.rois,
    }
    elapsed = time.perf_counter() - start
    report.update(time_s=elapsed, images_per_s=len(items) / max(elapsed, 1e-9))
    return Evaluation(report=report, worst=acc.worst_rois())


__all__ = [
    "Evaluation", "FIGURES", "MaskModel", "box_floor_masks", "bucket_means", "evaluate",
    "prefetch_map", "probabilities_to_original", "roi_figures",
]
