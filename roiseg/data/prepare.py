"""COCO instances -> person-only, no-crowd annotation files (``roiseg prepare-coco``).

Rules (:func:`select_persons`, shared by prepare, the dataset and analyze):

1. keep annotations of category 1 (person) only;
2. drop every image that has a crowd person (``iscrowd`` 1): its persons are not all outlined,
   so its "background" would be wrong;
3. skip (and count) person annotations that cannot define a ROI target: a bbox with a NaN or
   infinite value (``non_finite_bbox``) or zero width or height (``zero_area_bbox``); polygons with fewer than 3 points are removed from the
   segmentation (``short_polygon``, they enclose no area) and an annotation left with no polygon
   is skipped (``empty_segmentation``);
4. drop every image left without a person (``no_person``); with ``images_dir``, also images whose
   file is absent (``missing_file``).

A structurally malformed file (missing fields, unknown ``image_id``, malformed segmentation)
stops with an :class:`~roiseg.errors.InputError` naming the file and the id.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from roiseg.conventions import COCO_PERSON_CATEGORY_ID, person_only_name
from roiseg.data.coco import drop_short_polygons, index_by_image, load_coco_json, validate_segmentation
from roiseg.errors import InputError
from roiseg.utils.atomic import atomic_write, ensure_writable_dir
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

PERSON_CATEGORY: dict[str, Any] = {"supercategory": "person", "id": COCO_PERSON_CATEGORY_ID, "name": "person"}


@dataclass
class PersonSelection:
    """Result of :func:`select_persons`.

    ``images``: kept image records in file order. ``annotations``: kept person annotations in file
    order (segmentations cleaned). ``dropped_images``/``skipped``: counts by reason.
    """

    images: list[dict]
    annotations: list[dict]
    dropped_images: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)

    def by_image(self) -> dict[int, list[dict]]:
        """``image_id -> [person annotation, ...]`` for the kept images."""
        return index_by_image(self.annotations)  # type: ignore[return-value]


def select_persons(data: dict, source: str | Path, images_dir: str | Path | None = None) -> PersonSelection:
    """Apply the person-only / no-crowd rules (module docstring) to a validated COCO dict.

    Idempotent: applied to its own output it keeps everything.
    """
    images = {img["id"]: img for img in data["images"]}
    persons = [a for a in data["annotations"] if a["category_id"] == COCO_PERSON_CATEGORY_ID]
    crowd_images = {a["image_id"] for a in persons if a.get("iscrowd", 0)}
    skipped: Counter = Counter()
    kept: list[dict] = []
    for ann in persons:
        if ann["image_id"] in crowd_images:
            continue
        img = images[ann["image_id"]]
        if "segmentation" not in ann:
            raise InputError(f"{source}: person annotation id {ann['id']} has no 'segmentation'")
        if not all(math.isfinite(float(v)) for v in ann["bbox"]):
            skipped["non_finite_bbox"] += 1
            LOG.debug("skipping annotation id %s: bbox %s is not finite", ann["id"], ann["bbox"])
            continue
        _, _, bw, bh = ann["bbox"]
        if bw <= 0 or bh <= 0:
            skipped["zero_area_bbox"] += 1
            LOG.debug("skipping annotation id %s: bbox %s has zero area", ann["id"], ann["bbox"])
            continue
        segmentation, removed = drop_short_polygons(ann["segmentation"])
        if removed:
            skipped["short_polygon"] += removed
            LOG.debug("annotation id %s: removed %d polygon(s) with < 3 points", ann["id"], removed)
            if not segmentation:
                skipped["empty_segmentation"] += 1
                continue
            ann = {**ann, "segmentation": segmentation}
        try:
            validate_segmentation(segmentation, (img["height"], img["width"]), ann["id"])
        except ValueError as exc:
            raise InputError(f"{source}: {exc}") from exc
        kept.append(ann)

    with_person = {a["image_id"] for a in kept}
    dropped: Counter = Counter()
    kept_images: list[dict] = []
    for img in data["images"]:
        if img["id"] in crowd_images:
            dropped["crowd"] += 1
        elif img["id"] not in with_person:
            dropped["no_person"] += 1
        elif images_dir is not None and not (Path(images_dir) / img["file_name"]).is_file():
            dropped["missing_file"] += 1
            LOG.warning("image id %s: %s is not in %s; dropped", img["id"], img["file_name"], images_dir)
        else:
            kept_images.append(img)
    kept_ids = {img["id"] for img in kept_images}
    kept = [a for a in kept if a["image_id"] in kept_ids]
    return PersonSelection(kept_images, kept, dropped, skipped)


def person_only_dataset(data: dict, images: Sequence[dict], annotations: Sequence[dict]) -> dict:
    """A COCO dict with ``images``/``annotations`` replaced and only the person category.

    ``info`` and ``licenses`` are carried over when present.
    """
    categories = [c for c in data.get("categories", []) if c.get("id") == COCO_PERSON_CATEGORY_ID]
    out: dict[str, Any] = {k: data[k] for k in ("info", "licenses") if k in data}
    out["images"] = list(images)
    out["annotations"] = list(annotations)
    out["categories"] = categories or [dict(PERSON_CATEGORY)]
    return out


def subset_indices(n_available: int, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(n, n_available)`` items drawn without replacement.

    The draw is the first ``n`` of one seeded permutation, so for one seed a smaller subset is
    contained in a larger one (``_100`` within ``_500``).
    """
    order = np.random.default_rng(seed).permutation(n_available)
    return np.sort(order[: min(n, n_available)])


def subset_dataset(dataset: dict, n: int, seed: int = 0) -> dict:
    """Keep ``n`` images (and their annotations) drawn deterministically from ``seed``."""
    images = dataset["images"]
    chosen = [images[i] for i in subset_indices(len(images), n, seed)]
    ids = {img["id"] for img in chosen}
    return {**dataset, "images": chosen, "annotations": [a for a in dataset["annotations"] if a["image_id"] in ids]}


def _dump(path: Path, obj: dict) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, separators=(",", ":"))))


def prepare_coco(
    instances: str | Path,
    out_dir: str | Path,
    subsets: Sequence[int] = (),
    seed: int = 0,
    images_dir: str | Path | None = None,
) -> dict:
    """Write ``<stem>_person_only_no_crowd.json`` and one ``..._<N>.json`` per subset size.

    ``instances``: original COCO instances JSON. ``images_dir``: optional folder to check that
    every kept image exists (absent ones are dropped and counted). Nothing is written unless all
    inputs are valid. Returns a report: written files with image/annotation counts, dropped
    images and skipped annotations by reason.
    """
    instances = Path(instances)
    if images_dir is not None and not Path(images_dir).is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    for n in subsets:
        if n <= 0:
            raise InputError(f"subset must be a positive number of images, got {n}")
    data = load_coco_json(instances)
    selection = select_persons(data, instances, images_dir)
    if not selection.images:
        dropped = ", ".join(f"{k} {v}" for k, v in sorted(selection.dropped_images.items())) or "none"
        raise InputError(f"{instances}: no image with a usable person annotation (category_id "
                         f"{COCO_PERSON_CATEGORY_ID}, iscrowd 0) among its {len(data['images'])} images "
                         f"(dropped: {dropped}); nothing written")
    out_dir = ensure_writable_dir(out_dir)
    full = person_only_dataset(data, selection.images, selection.annotations)
    outputs: list[tuple[Path, dict]] = [(out_dir / person_only_name(instances.stem), full)]
    for n in subsets:
        if n > len(full["images"]):
            LOG.warning("subset %d asks for more than the %d images available; keeping all", n, len(full["images"]))
        outputs.append((out_dir / person_only_name(instances.stem, n), subset_dataset(full, n, seed)))
    written = []
    for path, dataset in outputs:
        _dump(path, dataset)
        LOG.info("wrote %s (%d images, %d persons)", path, len(dataset["images"]), len(dataset["annotations"]))
        written.append({"path": str(path), "images": len(dataset["images"]), "annotations": len(dataset["annotations"])})
    return {
        "instances": str(instances),
        "seed": seed,
        "written": written,
        "dropped_images": dict(selection.dropped_images),
        "skipped_annotations": dict(selection.skipped),
    }
