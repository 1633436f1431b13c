"""Evaluate an instance model (``roiseg fuse --instances``) with its own detector boxes: COCO mask AP.

The instance evaluator of :mod:`roiseg.evaluation.loop`: the standard COCO instance-segmentation
protocol (``roiseg evaluate`` on an instance model, chosen from its metadata; ``--rois detector``),
restricted to the person category:

* images: every image of the annotation file (``max_images``: the first N), persons or not; a
  missing, unreadable or wrongly sized image is skipped with a warning and counted;
* results: every instance the model returns (its own detections after its thresholds and NMS) is
  one result, scored with the model's detection ``score``; its mask is the argmax == target class of
  its probabilities at the original size (:class:`roiseg.runtime.session.FusedSession`,
  :func:`roiseg.runtime.session.to_original_size`);
  an empty mask is still a result;
* ground truth: the person annotations, the crowd regions (``iscrowd`` 1) included so that
  pycocotools ignores the detections that match them (neither true nor false positives);
* figures: ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` (:func:`roiseg.metrics.coco_ap.coco_mask_ap`,
  100 detections per image), the number of detections, of non-crowd persons and of crowd regions.

The per-ROI figures of :mod:`roiseg.evaluation.roi` (target IoU against the ground-truth box's
person) do not apply: a detection has no ground-truth box of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from roiseg.conventions import COCO_PERSON_CATEGORY_ID, TARGET
from roiseg.data.coco import load_coco_json, segmentation_to_rle
from roiseg.errors import InputError
from roiseg.evaluation.loop import evaluate_dataset
from roiseg.metrics.coco_ap import coco_mask_ap, instance_result
from roiseg.evaluation.report import INSTANCE_PROTOCOL as PROTOCOL
from roiseg.runtime.session import Feed, FusedSession, to_original_size


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


class InstanceEvaluator:
    """The instance evaluation (module docstring) as an :class:`~roiseg.evaluation.loop.Evaluator`."""

    def __init__(self, session: FusedSession, annotations: Path, max_images: int | None) -> None:
        if not session.is_instance_model:
            raise InputError(f"{session.path} is a ROI model (images + rois): it has no detections of its own")
        self.session = session
        data = load_coco_json(annotations)
        self.images = data["images"] if max_images is None else data["images"][: max(0, int(max_images))]
        if not self.images:
            raise InputError(f"{annotations}: no image to evaluate")
        self.truth = _ground_truth(data, self.images)
        self.results: list[dict] = []
        self.evaluated: list[dict] = []
        self.rows: list[dict] = []

    def records(self) -> list[dict]:
        return self.images

    def prepare(self, record: dict, image_bgr: np.ndarray) -> Feed:
        return self.session.image_feed(image_bgr)

    def process(self, record: dict, feed: Feed) -> None:
        hw = (int(record["height"]), int(record["width"]))
        found = self.session.instances(feed, hw)
        _, labels = to_original_size(found.masks, hw, keep=())
        for mask, score in zip(labels == TARGET, found.scores):
            self.results.append(instance_result(record["id"], mask, float(score)))
        self.evaluated.append(record)
        self.rows.append({"image_id": record["id"], "file_name": record["file_name"],
                          "detections": int(len(found.scores))})

    def summarize(self) -> dict[str, Any]:
        done = {rec["id"] for rec in self.evaluated}
        gt = [a for a in self.truth if a["image_id"] in done]
        meta, params = self.session.meta, self.session.meta.instances.params
        return {
            "protocol": PROTOCOL, "model": str(self.session.path), "input_hw": list(meta.input_hw),
            "image_input": meta.image_input.value, "mask_source": self.session.mask_source,
            "num_detections": len(self.results), "num_persons": sum(1 for a in gt if not a["iscrowd"]),
            "num_crowd_regions": sum(1 for a in gt if a["iscrowd"]),
            "thresholds": {"score": params.score_threshold, "iou": params.iou_threshold,
                           "max_instances": params.max_instances, "person_classes": list(params.person_classes)},
            "mask_ap": coco_mask_ap(self.evaluated, gt, self.results), "per_image": self.rows,
        }


def evaluate_instances(session: FusedSession, annotations: str | Path, images_dir: str | Path, *,
                       max_images: int | None = None, workers: int = 2, show_progress: bool = True) -> dict[str, Any]:
    """The report of the module docstring (JSON-ready); nothing is written."""
    if not Path(images_dir).is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    evaluator = InstanceEvaluator(session, Path(annotations), max_images)
    return evaluate_dataset(evaluator, annotations, images_dir, workers=workers, show_progress=show_progress)
