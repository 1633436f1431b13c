"""Load and validate COCO instances JSON; index annotations per image; decode masks with pycocotools.

Coordinates in COCO files are *pixels of the original image*: ``bbox`` is ``[x, y, w, h]``,
polygons are flat ``[x1, y1, x2, y2, ...]`` lists, RLE ``size`` is ``[H, W]``.

A segmentation is one of

* a list of polygons (one person may be split into several polygons by occluders),
* an *uncompressed* RLE ``{"counts": [int, ...], "size": [H, W]}`` (crowd annotations),
* a *compressed* RLE ``{"counts": "<string>", "size": [H, W]}``.

All three are turned into one compressed RLE by :func:`segmentation_to_rle` and rasterised by
:func:`decode_mask`; both are thin wrappers over ``pycocotools.mask``.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from roiseg.errors import InputError
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

Rle = dict[str, Any]
"""Compressed pycocotools RLE: ``{"size": [H, W], "counts": bytes}``."""

IMAGE_FIELDS: tuple[str, ...] = ("id", "file_name", "height", "width")
ANNOTATION_FIELDS: tuple[str, ...] = ("id", "image_id", "category_id", "bbox")
MIN_POLYGON_POINTS: int = 3
LARGE_JSON_MB: float = 20.0
"""Reading a JSON at least this large is logged (it takes seconds)."""


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------
def load_coco_json(path: str | Path) -> dict:
    """Read a COCO instances JSON and check its structure (:func:`validate_coco`).

    Raises :class:`InputError` naming the file (and the record id) when the file is missing, is a
    folder, is not valid JSON, lacks ``images``/``annotations``, or has a malformed record.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a folder; expected a COCO instances JSON file")
    if not p.is_file():
        raise InputError(f"annotation file not found: {p}")
    size_mb = p.stat().st_size / 2**20
    LOG.log(logging.INFO if size_mb >= LARGE_JSON_MB else logging.DEBUG, "reading %s (%.0f MB)", p, size_mb)
    try:
        with open(p, "rb") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except (UnicodeDecodeError, OSError) as exc:
        raise InputError(f"{p}: cannot read as JSON: {exc}") from exc
    validate_coco(data, p)
    return data


def validate_coco(data: Any, source: str | Path) -> None:
    """Check the parts of a COCO instances dict that roiseg relies on.

    * top level is an object with list fields ``images`` and ``annotations``;
    * every image has ``id``, ``file_name`` and positive integer ``height``/``width``; ids are unique;
    * every annotation has ``id``, ``image_id`` (of a listed image), ``category_id`` and ``bbox``.

    Segmentations are checked later, per person annotation (:func:`segmentation_to_rle`).
    Raises :class:`InputError` naming ``source`` and the offending id.
    """
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object with 'images' and 'annotations', got {type(data).__name__}")
    for key in ("images", "annotations"):
        if key not in data:
            raise InputError(f"{source}: no '{key}' field; not a COCO instances file")
        if not isinstance(data[key], list):
            raise InputError(f"{source}: '{key}' must be a list, got {type(data[key]).__name__}")
    image_ids: set = set()
    for i, img in enumerate(data["images"]):
        _require_fields(img, IMAGE_FIELDS, source, "image", i)
        if img["id"] in image_ids:
            raise InputError(f"{source}: duplicate image id {img['id']}")
        h, w = img["height"], img["width"]
        if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
            raise InputError(f"{source}: image id {img['id']}: height/width must be positive integers, got {h}x{w}")
        image_ids.add(img["id"])
    for i, ann in enumerate(data["annotations"]):
        _require_fields(ann, ANNOTATION_FIELDS, source, "annotation", i)
        if ann["image_id"] not in image_ids:
            raise InputError(
                f"{source}: annotation id {ann['id']} refers to image_id {ann['image_id']}, which is not in 'images'"
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise InputError(f"{source}: annotation id {ann['id']}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}")


def _require_fields(record: Any, fields: Sequence[str], source: str | Path, kind: str, position: int) -> None:
    if not isinstance(record, dict):
        raise InputError(f"{source}: {kind} #{position} is not an object")
    missing = [f for f in fields if f not in record]
    if missing:
        ident = f"id {record['id']}" if "id" in record else f"#{position} (no id)"
        raise InputError(f"{source}: {kind} {ident} lacks field(s) {', '.join(missing)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _all_numbers(values: list) -> bool:
    """True when ``values`` is a flat list of finite numbers (checked in C by numpy)."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return arr.ndim == 1 and bool(np.isfinite(arr).all())


def index_by_image(annotations: Sequence[Mapping]) -> dict[int, list[Mapping]]:
    """``image_id -> [annotation, ...]`` keeping the file order of annotations."""
    index: dict[int, list[Mapping]] = defaultdict(list)
    for ann in annotations:
        index[ann["image_id"]].append(ann)
    return dict(index)


# --------------------------------------------------------------------------------------------
# Segmentation checks and decoding
# --------------------------------------------------------------------------------------------
def drop_short_polygons(segmentation: Any) -> tuple[Any, int]:
    """Remove polygons with fewer than 3 points from a polygon segmentation.

    Such a polygon encloses no area (and pycocotools would read a 2-point polygon as a *box*).
    Returns ``(segmentation, number_removed)``; RLE segmentations are returned unchanged.
    """
    if not isinstance(segmentation, list):
        return segmentation, 0
    kept = [p for p in segmentation if not (isinstance(p, list) and len(p) < 2 * MIN_POLYGON_POINTS)]
    return kept, len(segmentation) - len(kept)


def validate_segmentation(segmentation: Any, image_hw: tuple[int, int], ann_id: Any = None) -> None:
    """Raise :class:`ValueError` naming ``ann_id`` if ``segmentation`` is not a usable COCO segmentation.

    Polygons: flat lists of an even number (>= 6) of numbers. RLE: ``counts`` (list or string)
    and ``size`` equal to the image's ``[H, W]``.
    """
    what = f"annotation id {ann_id}" if ann_id is not None else "segmentation"
    if isinstance(segmentation, list):
        for poly in segmentation:
            if not isinstance(poly, list) or not _all_numbers(poly):
                raise ValueError(f"{what}: polygon must be a flat list of numbers")
            if len(poly) % 2:
                raise ValueError(f"{what}: polygon has an odd number of coordinates ({len(poly)})")
            if len(poly) < 2 * MIN_POLYGON_POINTS:
                raise ValueError(f"{what}: polygon has {len(poly) // 2} point(s); at least 3 are needed")
        return
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not (isinstance(size, list) and len(size) == 2 and [int(v) for v in size] == [int(image_hw[0]), int(image_hw[1])]):
            raise ValueError(f"{what}: RLE size {size} differs from the image size {list(image_hw)}")
        if not isinstance(segmentation["counts"], (list, str, bytes)):
            raise ValueError(f"{what}: RLE counts must be a list or a string")
        return
    raise ValueError(f"{what}: segmentation must be a list of polygons or an RLE object")


def segmentation_to_rle(segmentation: Any, image_hw: tuple[int, int], ann_id: Any = None) -> Rle:
    """Polygons / uncompressed RLE / compressed RLE -> one compressed RLE of an ``(H, W)`` image.

    Polygons (pixel coordinates) are rasterised by pycocotools and merged (union); an empty
    polygon list gives an empty mask. Raises :class:`ValueError` naming ``ann_id`` for a
    malformed segmentation (:func:`validate_segmentation`).
    """
    validate_segmentation(segmentation, image_hw, ann_id)
    h, w = int(image_hw[0]), int(image_hw[1])
    if isinstance(segmentation, list):
        if not segmentation:
            return mask_utils.encode(np.zeros((h, w), dtype=np.uint8, order="F"))
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return mask_utils.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    return {"size": [h, w], "counts": counts}


def decode_rle(rle: Rle) -> np.ndarray:
    """Compressed RLE -> [H, W] bool mask."""
    return mask_utils.decode(rle).astype(bool)


def resize_mask_nearest(mask: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """[H0, W0] bool -> [H, W] bool with nearest-neighbour interpolation (``cv2.INTER_NEAREST``)."""
    h, w = out_hw
    if mask.shape == (h, w):
        return mask.astype(bool, copy=False)
    return cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def decode_mask(
    segmentation: Any, image_hw: tuple[int, int], out_hw: tuple[int, int] | None = None, ann_id: Any = None
) -> np.ndarray:
    """Any COCO segmentation -> [H, W] bool mask.

    Rasterised at the original ``image_hw`` by pycocotools, then resized to ``out_hw`` (when
    given) with nearest neighbour.
    """
    mask = decode_rle(segmentation_to_rle(segmentation, image_hw, ann_id))
    return resize_mask_nearest(mask, out_hw) if out_hw is not None else mask


def box_rle(x_span: tuple[int, int], y_span: tuple[int, int], image_hw: tuple[int, int]) -> Rle:
    """Compressed RLE of the pixel rectangle ``[x0, x1) x [y0, y1)`` of an ``(H, W)`` image.

    Built directly from run lengths (COCO RLE is column-major), so no full-image array is made.
    Spans come from :func:`roiseg.conventions.roi_pixel_span` (pixel-centre rule).
    """
    h, w = int(image_hw[0]), int(image_hw[1])
    (x0, x1), (y0, y1) = x_span, y_span
    rows = y1 - y0
    if x1 <= x0 or rows <= 0:
        counts = np.array([h * w], dtype=np.uint32)
    else:  # zeros up to (x0, y0); per column `rows` ones, `h - rows` zeros; zeros to the end
        counts = np.empty(2 * (x1 - x0) + 1, dtype=np.uint32)
        counts[0] = x0 * h + y0
        counts[1::2] = rows
        counts[2::2] = h - rows
        counts[-1] = h - y1 + (w - x1) * h
    return mask_utils.frPyObjects({"counts": counts, "size": [h, w]}, h, w)
