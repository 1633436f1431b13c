"""Pixel statistics of the 3-class ROI targets and the loss class weights (``data_analyze.json``).

Protocol, per person instance of a person-only JSON (:func:`roiseg.data.prepare.select_persons`):

* ROI = the annotation's ``bbox`` in original pixels; a pixel is inside when its centre lies in
  the half-open box ``[x, x + w) x [y, y + h)`` (:func:`roiseg.conventions.roi_pixel_span`);
* at original resolution, inside the ROI: ``target`` = the instance's own mask, ``non_target`` =
  any other instance's mask and not the own mask, ``background`` = the rest of the ROI.

Speed: each instance is rasterised once, as a pycocotools RLE; a ROI is an RLE rectangle built
from run lengths, and the counts are RLE intersections and areas. No per-ROI full-image array is
ever made, so the cost per ROI is proportional to the runs of the masks, not to the image size.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from roiseg.conventions import (
    CLASS_NAMES, COCO_PERSON_CATEGORY_ID, NUM_CLASSES, SIZE_BUCKETS, roi_pixel_span, size_bucket,
)
from roiseg.data.coco import Rle, box_rle, load_coco_json, segmentation_to_rle
from roiseg.data.prepare import select_persons
from roiseg.errors import InputError
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)

CLASS_WEIGHT_CLIP: tuple[float, float] = (0.1, 10.0)
CLASS_WEIGHTS_FORMULA: str = (
    "median-frequency balancing: w_c = median(r) / r_c, where r = pixel_ratios in class order "
    "(background, target, non_target); then scaled so that sum_c w_c * r_c = 1 (the expected "
    "per-pixel weight is 1); then clipped to [0.1, 10]"
)
IMAGES_PER_TASK: int = 64
"""Images per multiprocessing task: large enough to amortise pickling, small for a live bar."""

ImageJob = tuple[tuple[int, int], list[tuple[list[float], Any, float]]]
"""``((H, W), [(bbox_xywh_px, segmentation, area), ...])`` of one image."""


# --------------------------------------------------------------------------------------------
# Counting (pure functions)
# --------------------------------------------------------------------------------------------
def bbox_pixel_spans(bbox_xywh: Sequence[float], image_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """COCO pixel ``[x, y, w, h]`` -> ``((x0, x1), (y0, y1))`` pixel index spans by the centre rule."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    box = (x, y, x + w, y + h)
    return roi_pixel_span(box, image_hw[1], 0), roi_pixel_span(box, image_hw[0], 1)


def roi_class_counts(rles: Sequence[Rle], bboxes_xywh: Sequence[Sequence[float]], image_hw: tuple[int, int]) -> np.ndarray:
    """[K, 3] int64 pixel counts (background, target, non_target) of each instance's ROI.

    ``rles``: the K instances of one image (compressed RLE at original resolution);
    ``bboxes_xywh``: their COCO boxes in original pixels. Row k uses instance k as the target.
    """
    union = mask_utils.merge(list(rles), intersect=False) if len(rles) > 1 else rles[0]
    counts = np.zeros((len(rles), NUM_CLASSES), dtype=np.int64)
    for k, (rle, bbox) in enumerate(zip(rles, bboxes_xywh)):
        x_span, y_span = bbox_pixel_spans(bbox, image_hw)
        inside = max(x_span[1] - x_span[0], 0) * max(y_span[1] - y_span[0], 0)
        if inside == 0:
            continue
        box = box_rle(x_span, y_span, image_hw)
        target = int(mask_utils.area(mask_utils.merge([rle, box], intersect=True)))
        persons = int(mask_utils.area(mask_utils.merge([union, box], intersect=True)))
        counts[k] = (inside - persons, target, persons - target)
    return counts


def class_weights(ratios: Sequence[float], clip: tuple[float, float] = CLASS_WEIGHT_CLIP) -> list[float]:
    """Loss weights per class from pixel ratios, by :data:`CLASS_WEIGHTS_FORMULA`.

    A class with ratio 0 gets the upper clip value.
    """
    r = np.asarray(ratios, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 ratios: handled by np.where
        w = np.where(r > 0, np.median(r) / r, np.inf)
    finite = np.isfinite(w)
    norm = float(np.sum(w[finite] * r[finite]))
    if norm > 0:
        w = np.where(finite, w / norm, np.inf)
    return [float(v) for v in np.clip(w, clip[0], clip[1])]


def load_class_weights(path: str | Path | None) -> list[float] | None:
    """``class_weights`` of a ``data_analyze.json``; ``None`` when ``path`` is ``None`` or absent.

    Raises :class:`InputError` naming the file when it exists but is not a valid analysis.
    """
    if path is None or not Path(path).exists():
        if path is not None:
            LOG.info("no %s; class weights default to 1", path)
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{path}: not a readable analysis JSON: {exc}") from exc
    weights = data.get("class_weights") if isinstance(data, dict) else None
    if not (isinstance(weights, list) and len(weights) == NUM_CLASSES and all(isinstance(w, (int, float)) for w in weights)):
        raise InputError(f"{path}: 'class_weights' must be a list of {NUM_CLASSES} numbers {list(CLASS_NAMES)}")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise InputError(f"{path}: 'class_weights' must be positive and finite, got {weights}")
    return [float(w) for w in weights]


# --------------------------------------------------------------------------------------------
# Work split
# --------------------------------------------------------------------------------------------
def _analyze_images(jobs: Sequence[ImageJob]) -> dict:
    """Counts of a chunk of images: per-class totals, per size bucket, and ROI sizes."""
    totals = np.zeros(NUM_CLASSES, dtype=np.int64)
    by_bucket = {b: np.zeros(NUM_CLASSES, dtype=np.int64) for b in SIZE_BUCKETS}
    rois_by_bucket: Counter = Counter()
    sizes = []  # (w_px, h_px, box area / image area)
    for image_hw, anns in jobs:
        rles = [segmentation_to_rle(seg, image_hw) for _, seg, _ in anns]
        counts = roi_class_counts(rles, [b for b, _, _ in anns], image_hw)
        totals += counts.sum(axis=0)
        for (bbox, _, area), row in zip(anns, counts):
            bucket = size_bucket(area)
            by_bucket[bucket] += row
            rois_by_bucket[bucket] += 1
            sizes.append((bbox[2], bbox[3], bbox[2] * bbox[3] / (image_hw[0] * image_hw[1])))
    return {"totals": totals, "by_bucket": by_bucket, "rois_by_bucket": rois_by_bucket,
            "sizes": np.asarray(sizes, dtype=np.float64).reshape(-1, 3), "instances": len(sizes)}


def _chunks(jobs: Sequence[ImageJob], size: int) -> Iterator[Sequence[ImageJob]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


def default_workers() -> int:
    """Number of CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _run_jobs(jobs: Sequence[ImageJob], n_instances: int, workers: int) -> list[dict]:
    chunks = list(_chunks(jobs, IMAGES_PER_TASK))
    workers = max(1, min(workers, len(chunks)))
    LOG.info("%d task(s) of up to %d images on %d process(es)", len(chunks), IMAGES_PER_TASK, workers)
    bar = progress(None, desc="analyze", total=n_instances, unit="ROI")  # manual bar, updated per chunk
    parts = []
    try:
        if workers == 1:
            results: Iterator[dict] = map(_analyze_images, chunks)
            for part in results:
                parts.append(part)
                bar.update(part["instances"])
        else:
            # spawn: portable, and safe after torch or other threaded libraries were imported
            with mp.get_context("spawn").Pool(workers) as pool:
                for part in pool.imap_unordered(_analyze_images, chunks):
                    parts.append(part)
                    bar.update(part["instances"])
    finally:
        bar.close()
    return parts


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------
def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"min": 0.0, "median": 0.0, "mean": 0.0, "max": 0.0}
    v = np.sort(values)
    return {"min": float(v[0]), "median": float(np.median(v)), "mean": float(v.mean()), "max": float(v[-1])}


def _ratios(counts: np.ndarray) -> dict[str, float]:
    total = int(counts.sum())
    return {name: (float(c) / total if total else 0.0) for name, c in zip(CLASS_NAMES, counts)}


def _reasons(selection) -> str:
    """``"; dropped images: crowd 2, no_person 3; skipped annotations: ..."`` (empty when nothing was)."""
    parts = [f"{what}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
             for what, counts in (("dropped images", selection.dropped_images), ("skipped annotations", selection.skipped))
             if counts]
    return "".join(f"; {p}" for p in parts)


def analyze(annotations: str | Path, workers: int | None = None) -> dict:
    """Pixel counts and ratios of the 3-class ROI targets, ROI size statistics and class weights.

    ``annotations``: a person-only JSON (an original instances JSON also works: the person-only
    rules are applied on the fly). Images are not read: sizes come from the JSON. ``workers``:
    processes (default: all cores). Returns the ``data_analyze.json`` content.
    """
    annotations = Path(annotations)
    data = load_coco_json(annotations)
    selection = select_persons(data, annotations)
    by_image = selection.by_image()
    jobs: list[ImageJob] = [
        ((img["height"], img["width"]),
         [(a["bbox"], a["segmentation"], float(a.get("area", a["bbox"][2] * a["bbox"][3]))) for a in by_image[img["id"]]])
        for img in selection.images
    ]
    n_instances = len(selection.annotations)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    if n_instances == 0:
        raise InputError(f"{annotations}: no person ROI to analyze (no annotation with category_id "
                         f"{COCO_PERSON_CATEGORY_ID} and iscrowd 0 that has a box and a mask{_reasons(selection)})")
    LOG.info("analyzing %d ROIs of %d images in %s", n_instances, len(jobs), annotations)
    parts = _run_jobs(jobs, n_instances, workers)

    totals = sum((p["totals"] for p in parts), np.zeros(NUM_CLASSES, dtype=np.int64))
    by_bucket = {b: sum((p["by_bucket"][b] for p in parts), np.zeros(NUM_CLASSES, dtype=np.int64)) for b in SIZE_BUCKETS}
    rois_by_bucket = sum((p["rois_by_bucket"] for p in parts), Counter())
    sizes = np.concatenate([p["sizes"] for p in parts]) if parts else np.zeros((0, 3))
    if not totals.any():
        raise InputError(f"{annotations}: the {n_instances} person ROIs have no pixel centre inside their boxes (every bbox is under one pixel)")
    ratios = _ratios(totals)
    weights = class_weights([ratios[n] for n in CLASS_NAMES])
    return {
        "annotations": str(annotations),
        "protocol": "ROI = person bbox; pixel inside when its centre lies in [x, x+w) x [y, y+h); "
        "masks rasterised by pycocotools at original resolution",
        "num_images": len(jobs),
        "num_instances": n_instances,
        "class_names": list(CLASS_NAMES),
        "pixel_counts": {n: int(c) for n, c in zip(CLASS_NAMES, totals)},
        "pixel_ratios": ratios,
        "class_weights": weights,
        "class_weights_formula": CLASS_WEIGHTS_FORMULA,
        "roi_size": {
            "bucket_by": "annotation area in original pixels (COCO: small < 32^2 <= medium < 96^2 <= large)",
            "buckets": {b: int(rois_by_bucket.get(b, 0)) for b in SIZE_BUCKETS},
            "pixel_ratios_by_bucket": {b: _ratios(by_bucket[b]) for b in SIZE_BUCKETS},
            "width_px": _stats(sizes[:, 0]),
            "height_px": _stats(sizes[:, 1]),
            "image_fraction": _stats(sizes[:, 2]),
        },
        "skipped_annotations": dict(selection.skipped),
        "dropped_images": dict(selection.dropped_images),
    }
