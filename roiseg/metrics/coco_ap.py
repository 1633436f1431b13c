"""COCO mask AP of per-ROI target masks, with pycocotools' ``COCOeval(iouType="segm")``.

The ground truth is a COCO object built in memory from the evaluated images and the annotations
of the evaluated ROIs only (person category, ``iscrowd`` 0, each with an ``area``, which sets its
size range; the instance protocol, ``evaluate --rois detector``, also passes the crowd regions with
``iscrowd`` 1). Each ROI contributes at most one detection: the RLE of its predicted target mask at
the original resolution (category person), scored by the mean predicted target probability inside
that mask (:func:`detection`). Empty predicted masks are not detections.

Figures (pycocotools' ``stats[0:6]``): ``AP`` (mean over IoU thresholds 0.50:0.05:0.95), ``AP50``,
``AP75``, ``APs``/``APm``/``APl`` (AP of ground truths of area < 32², 32²..96², > 96² original
pixels), all at 100 detections per image. A figure pycocotools leaves undefined (-1, e.g. no
ground truth of that size) is ``None``. pycocotools' prints are swallowed.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from roiseg.conventions import COCO_PERSON_CATEGORY_ID

AP_KEYS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""Keys of :func:`coco_mask_ap`'s result, in pycocotools' ``stats`` order."""
_AREA_RANGES: dict[str, tuple[float, float]] = {"APs": (0.0, 32.0**2), "APm": (32.0**2, 96.0**2), "APl": (96.0**2, 1e10)}


def detection(image_id: int, mask: np.ndarray, target_prob: np.ndarray) -> dict[str, Any] | None:
    """One COCO segm result for a ROI, or ``None`` when ``mask`` is empty.

    ``mask``: [H0, W0] bool predicted target mask at the original resolution; ``target_prob``:
    [H0, W0] float target probability at that resolution. Score = mean of ``target_prob`` over
    ``mask`` (in [0, 1]).
    """
    mask = np.asarray(mask, dtype=bool)
    count = int(mask.sum())
    if count == 0:
        return None
    score = float(np.asarray(target_prob, dtype=np.float64)[mask].sum() / count)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"image_id": image_id, "category_id": COCO_PERSON_CATEGORY_ID, "segmentation": rle, "score": score}


def instance_result(image_id: int, mask: np.ndarray, score: float) -> dict[str, Any]:
    """One COCO segm result for a detected instance: its [H0, W0] bool mask (empty allowed: a detection
    whose mask is empty still counts, and misses) and the detector's ``score``."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"image_id": image_id, "category_id": COCO_PERSON_CATEGORY_ID, "segmentation": rle, "score": float(score)}


def ground_truth(images: Sequence[dict], annotations: Sequence[dict]) -> COCO:
    """In-memory pycocotools COCO of ``images`` (``id``, ``height``, ``width``) and person ``annotations``.

    Each annotation needs ``id``, ``image_id``, ``segmentation`` (polygons or RLE, pixels of the
    original image) and ``area``; it is stored with the person category and its own ``iscrowd`` (0 when
    absent: COCOeval then ignores the detections that match a crowd region instead of counting them false).
    """
    gt = COCO()
    gt.dataset = {
        "images": [{"id": im["id"], "height": im["height"], "width": im["width"]} for im in images],
        "annotations": [
            {"id": a["id"], "image_id": a["image_id"], "category_id": COCO_PERSON_CATEGORY_ID,
             "iscrowd": int(a.get("iscrowd", 0)),
             "segmentation": a["segmentation"], "area": float(a["area"]), "bbox": list(a["bbox"])}
            for a in annotations
        ],
        "categories": [{"id": COCO_PERSON_CATEGORY_ID, "name": "person", "supercategory": "person"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_mask_ap(images: Sequence[dict], annotations: Sequence[dict], detections: Sequence[dict]) -> dict[str, float | None]:
    """``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` (module docstring) in [0, 1] or ``None``.

    ``detections``: results of :func:`detection` (``None`` entries are ignored). Without any
    detection every defined figure is 0 (all ground truths missed).
    """
    dets = [d for d in detections if d is not None]
    if not annotations:
        return {k: None for k in AP_KEYS}
    if not dets:
        areas = [float(a["area"]) for a in annotations if not a.get("iscrowd", 0)]
        has = {k: any(lo <= x <= hi for x in areas) for k, (lo, hi) in _AREA_RANGES.items()}
        return {k: (0.0 if has.get(k, True) else None) for k in AP_KEYS}
    gt = ground_truth(images, annotations)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(gt, dt, iouType="segm")
        ev.params.imgIds = [im["id"] for im in images]
        ev.params.catIds = [COCO_PERSON_CATEGORY_ID]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) for v in ev.stats[: len(AP_KEYS)]]
    return {k: (None if v < 0 else v) for k, v in zip(AP_KEYS, stats)}


__all__ = ["AP_KEYS", "coco_mask_ap", "detection", "ground_truth", "instance_result"]
