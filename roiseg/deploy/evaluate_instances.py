"""Evaluate an instance model (``roiseg fuse --instances``) with its own detector boxes: COCO mask AP.

The standard COCO instance-segmentation protocol (``roiseg evaluate --rois detector``), restricted
to the person category:

* images: every image of the annotation file (``max_images``: the first N), persons or not; a
  missing, unreadable or wrongly sized image is skipped with a warning and counted;
* results: every instance the model returns (its own detections after its thresholds and NMS) is
  one result, scored with the model's detection ``score``; its mask is the argmax == target class of
  its probabilities resized to the original size (:class:`roiseg.deploy.predict_instances.InstanceSession`);
  an empty mask is still a result;
* ground truth: the person annotations, the crowd regions (``iscrowd`` 1) included so that
  pycocotools ignores the detections that match them (neither true nor false positives);
* figures: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` (:func:`roiseg.metrics.coco_ap.coco_mask_ap`,
  100 detections per image), the number of detections, of non-crowd persons and of crowd regions.

The per-ROI figures of :mod:`roiseg.deploy.evaluate` (target IoU against the ground-truth box's
person) do not apply: a detection has no ground-truth box of its own.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from roiseg.conventions import COCO_PERSON_CATEGORY_ID, TARGET
from roiseg.data.coco import load_coco_json, segmentation_to_rle
from roiseg.deploy.evaluate import SKIP_REASONS, prefetch_map, probabilities_to_original
from roiseg.deploy.predict_instances import InstanceSession
from roiseg.errors import InputError
from roiseg.metrics.coco_ap import AP_KEYS, coco_mask_ap, instance_result
from roiseg.utils.atomic import atomic_write
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)

PROTOCOL: str = "instances"
"""``report["protocol"]`` of this evaluation (the ROI evaluation has none)."""


@dataclass
class _Item:
    record: dict
    status: str = "ok"
    feed: dict[str, np.ndarray] | None = None


def _ground_truth(data: dict, images: list[dict]) -> list[dict]:
    """The person annotations of ``images`` (crowd regions included) with compressed RLE and an area."""
    wanted = {im["id"]: (int(im["height"]), int(im["width"])) for im in images}
    out = []
    for ann in data["annotations"]:
        if ann.get("category_id") != COCO_PERSON_CATEGORY_ID or ann["image_id"] not in wanted:
            continue
        try:
            rle = segmentation_to_rle(ann["segmentation"], wanted[ann["image_id"]], ann["id"])
        except (KeyError, ValueError) as exc:
            raise InputError(f"annotation {ann.get('id')}: {exc}") from exc
        area = float(ann["area"]) if "area" in ann else float(mask_utils.area(rle))
        out.append({**ann, "segmentation": rle, "area": area, "iscrowd": int(ann.get("iscrowd", 0))})
    return out


def _prepare(record: dict, images_dir: Path, session: InstanceSession) -> _Item:
    """Read one image and make the model's input (in a worker thread)."""
    path = images_dir / record["file_name"]
    if not path.is_file():
        return _Item(record, "missing")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return _Item(record, "unreadable")
    if image.shape[:2] != (int(record["height"]), int(record["width"])):
        return _Item(record, "size_mismatch")
    return _Item(record, feed=session.feed(image))


def _target_masks(session: InstanceSession, masks: np.ndarray, orig_hw: tuple[int, int]) -> np.ndarray:
    """[K, H0, W0] bool: each instance's argmax == target at the original size."""
    if session.raw:  # pasted at the original size by the model
        return masks.argmax(axis=1) == TARGET
    labels, _ = probabilities_to_original(masks, orig_hw)
    return labels == TARGET


def evaluate_instances(session: InstanceSession, annotations: str | Path, images_dir: str | Path, *,
                       max_images: int | None = None, workers: int = 2, show_progress: bool = True) -> dict[str, Any]:
    """The report of the module docstring (JSON-ready); nothing is written."""
    annotations, images_dir = Path(annotations), Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    data = load_coco_json(annotations)
    images = data["images"] if max_images is None else data["images"][: max(0, int(max_images))]
    if not images:
        raise InputError(f"{annotations}: no image to evaluate")
    truth = _ground_truth(data, images)
    results, evaluated, rows, skipped = [], [], [], Counter()
    start = time.perf_counter()
    prepared = prefetch_map(lambda rec: _prepare(rec, images_dir, session), images, workers)
    for item in progress(prepared, desc="evaluate", total=len(images), unit="img", disable=not show_progress):
        rec = item.record
        if item.status != "ok":
            skipped[item.status] += 1
            LOG.warning("image id %s: %s is %s; skipped", rec["id"], images_dir / rec["file_name"], item.status)
            continue
        hw = (int(rec["height"]), int(rec["width"]))
        _, scores, _, masks = session.run(item.feed, hw)
        for mask, score in zip(_target_masks(session, masks, hw), scores):
            results.append(instance_result(rec["id"], mask, float(score)))
        evaluated.append(rec)
        rows.append({"image_id": rec["id"], "file_name": rec["file_name"], "detections": int(len(scores))})
    if not evaluated:
        raise InputError(f"none of the {len(images)} images of {annotations} could be read from {images_dir}")
    done = {rec["id"] for rec in evaluated}
    gt = [a for a in truth if a["image_id"] in done]
    elapsed = time.perf_counter() - start
    params = session.props.params
    return {
        "protocol": PROTOCOL, "model": str(session.path), "annotations": str(annotations), "images_dir": str(images_dir),
        "input_hw": list(session.meta.input_hw), "image_input": session.meta.image_input,
        "images": {"selected": len(images), "evaluated": len(evaluated),
                   "skipped": {r: int(skipped[r]) for r in SKIP_REASONS}},
        "num_detections": len(results), "num_persons": sum(1 for a in gt if not a["iscrowd"]),
        "num_crowd_regions": sum(1 for a in gt if a["iscrowd"]),
        "thresholds": {"score": params.score_threshold, "iou": params.iou_threshold,
                       "max_instances": params.max_instances, "person_classes": list(params.person_classes)},
        "mask_ap": coco_mask_ap(evaluated, gt, results),
        "time_s": elapsed, "images_per_s": len(images) / max(elapsed, 1e-9), "per_image": rows,
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}"


def _summary(report: dict[str, Any]) -> str:
    im, th = report["images"], report["thresholds"]
    skipped = ", ".join(f"{n} {r}" for r, n in im["skipped"].items() if n) or "none"
    return (f"{im['evaluated']} of {im['selected']} images evaluated (skipped: {skipped}); {report['num_detections']} "
            f"detections (score > {th['score']:g}, NMS IoU {th['iou']:g}, at most {th['max_instances']} per image), "
            f"{report['num_persons']} persons, {report['num_crowd_regions']} crowd regions (ignored); "
            f"{report['images_per_s']:.2f} images/s")


def format_instance_table(report: dict[str, Any]) -> str:
    """COCO mask AP with the detector's boxes, as printed by ``roiseg evaluate --rois detector``."""
    ap = report["mask_ap"]
    lines = ["mask AP with the model's own detections (COCO protocol, persons)",
             "  ".join(f"{k:>6}" for k in AP_KEYS), "  ".join(f"{_fmt(ap[k]):>6}" for k in AP_KEYS)]
    return "\n".join([*lines, "", _summary(report)])


def write_instance_markdown(path: str | Path, report: dict[str, Any], title: str = "roiseg evaluate --rois detector") -> Path:
    """The figures as a Markdown document (atomically)."""
    ap = report["mask_ap"]
    text = "\n".join([f"# {title}", "", f"Model `{report['model']}`, annotations `{report['annotations']}`, images "
                      f"`{report['images_dir']}`.", "", "| " + " | ".join(AP_KEYS) + " |",
                      "|" + "|".join(["---:"] * len(AP_KEYS)) + "|", "| " + " | ".join(_fmt(ap[k]) for k in AP_KEYS) + " |",
                      "", _summary(report) + ".", ""])
    return atomic_write(path, lambda p: p.write_text(text))
