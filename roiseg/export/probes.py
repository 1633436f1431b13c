"""Inputs the fused model is checked on: images (real or a smooth synthetic one) and ROI sets.

ROIs are normalised ``x1, y1, x2, y2``: plausible person boxes, ground-truth boxes of a COCO
file, and edge cases (touching each border, 3 pixels wide or tall, the whole image). Never
uniform random boxes, which are degenerate (``x2 < x1``). Used by ``fuse`` (to verify the
simplified model: :func:`model_feeds`, with the robust contract's ROI sets) and ``parity-check``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from roiseg.conventions import (
    DEFAULT_IMAGE_INPUT, FUSED_ROIS_INPUT, RAW_IMAGE_INPUT, ImageInput, Preprocessing, coco_bbox_to_roi, preprocess,
    read_user_image,
)
from roiseg.data.coco import load_coco_json
from roiseg.data.prepare import select_persons
from roiseg.errors import InputError
from roiseg.export.raw_input import raw_from_tensor

MANY_ROIS: int = 16
"""ROIs in the "many" set of each image (GT boxes + edge cases, topped up with plausible boxes)."""
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")
AWKWARD_ROIS: tuple[tuple[float, float, float, float], ...] = (
    (-0.20, 0.10, 0.50, 1.30),  # partly outside the image: clipped
    (0.80, 0.90, 0.30, 0.20),  # corners given in reverse order: ordered
    (float("nan"), 0.10, 0.50, 0.50),  # non-finite: all background
    (0.10, float("inf"), 0.50, 0.50),
    (1.20, 1.10, 1.50, 1.40),  # wholly outside: empty after clipping, all background
    (0.20, 0.20, 0.60, 0.70),  # a plain box among them
)
"""Boxes the contract sanitises (:func:`roiseg.export.wrapper.sanitize_rois`); fuse and parity run them with
the plain ones."""


def _check_max_images(max_images: int | None) -> None:
    if max_images is not None and max_images < 1:
        raise InputError(f"max_images must be at least 1, got {max_images}")


def smooth_image(input_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """[1, 3, H, W] float32 in [0, 1]: low-frequency colour noise (a stand-in for a photo)."""
    rng = np.random.default_rng(seed)
    h, w = input_hw
    coarse = rng.random((max(h // 16, 2), max(w // 16, 2), 3), dtype=np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0.0, 1.0).transpose(2, 0, 1)[None].astype(np.float32).copy()


def plausible_rois(n: int, seed: int = 0) -> np.ndarray:
    """[n, 4] normalised xyxy person-like boxes inside the image (width 0.08-0.5, height 0.2-0.9)."""
    rng = np.random.default_rng(seed)
    wh = np.stack([rng.uniform(0.08, 0.5, n), rng.uniform(0.2, 0.9, n)], axis=1)
    x1y1 = rng.uniform(0.0, 1.0, (n, 2)) * (1.0 - wh)
    return np.concatenate([x1y1, x1y1 + wh], axis=1).astype(np.float32)


def edge_case_rois(input_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Named normalised xyxy ROIs: touching each border, a few pixels wide, a few pixels tall, whole image."""
    h, w = input_hw
    thin_w, thin_h = 3.0 / w, 3.0 / h
    cases = {
        "left_border": [0.0, 0.30, 0.35, 0.80],
        "right_border": [0.60, 0.20, 1.0, 0.70],
        "top_border": [0.30, 0.0, 0.70, 0.40],
        "bottom_border": [0.25, 0.60, 0.60, 1.0],
        "thin_3px_wide": [0.50, 0.20, 0.50 + thin_w, 0.80],
        "thin_3px_tall": [0.20, 0.50, 0.80, 0.50 + thin_h],
        "whole_image": [0.0, 0.0, 1.0, 1.0],
    }
    return {k: np.asarray(v, dtype=np.float32) for k, v in cases.items()}


def probe_rois(base: np.ndarray, input_hw: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """``base`` boxes, then the edge cases, topped up with plausible boxes to ``n`` ROIs (at least).

    Returns [max(n, len(base) + number of edge cases), 4] normalised xyxy float32.
    """
    rois = [np.asarray(base, dtype=np.float32).reshape(-1, 4), np.stack(list(edge_case_rois(input_hw).values()))]
    have = sum(len(r) for r in rois)
    if have < n:
        rois.append(plausible_rois(n - have, seed=seed + 1))
    return np.concatenate(rois)


@dataclass
class ProbeImage:
    """One image to compare on: its name, the preprocessed input and its GT boxes (may be empty)."""

    name: str
    image: np.ndarray  # [1, 3, H, W] float32
    gt_rois: np.ndarray  # [K, 4] normalised xyxy
    raw: np.ndarray | None = None  # [H0, W0, 3] uint8 BGR as read (for raw-image models)


@dataclass
class ProbeImages:
    """Probe images read one at a time as they are iterated (``len()`` reads none): per file its name,
    path and GT boxes ([K, 4] normalised xyxy; ``None``: 3 plausible boxes seeded by its position)."""

    files: list[tuple[str, Path, np.ndarray | None]]
    input_hw: tuple[int, int]
    preprocessing: Preprocessing

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[ProbeImage]:
        for i, (name, path, boxes) in enumerate(self.files):
            raw = read_user_image(path)
            rois = boxes if boxes is not None else plausible_rois(3, seed=i)
            yield ProbeImage(name, preprocess(raw, self.input_hw, self.preprocessing), rois, raw)


def probe_files(annotations: str | Path | None, images_dir: str | Path,
                max_images: int | None = None) -> list[tuple[str, Path, np.ndarray | None]]:
    """The probe files, as :class:`ProbeImages` lists them: with ``annotations`` (COCO instances JSON)
    its images with person (non-crowd) GT boxes (rules of ``prepare-coco``); without, every image file
    of the folder (sorted) with ``None`` for plausible boxes. At most ``max_images``."""
    _check_max_images(max_images)
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"image folder not found: {images_dir}")
    if annotations is None:
        paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
        return [(p.name, p, None) for p in paths[:max_images]]
    sel = select_persons(load_coco_json(annotations), annotations, images_dir)
    if not sel.images:
        raise InputError(f"{annotations}: no image with a person annotation has its file in {images_dir}")
    by_image, files = sel.by_image(), []
    for rec in sel.images[:max_images]:
        hw = (int(rec["height"]), int(rec["width"]))
        boxes = np.stack([coco_bbox_to_roi(a["bbox"], hw) for a in by_image[rec["id"]]])
        files.append((rec["file_name"], images_dir / rec["file_name"], np.clip(boxes, 0.0, 1.0)))
    return files


def coco_probe_images(
    annotations: str | Path, images_dir: str | Path, input_hw: tuple[int, int], preprocessing,
    max_images: int | None = None,
) -> ProbeImages:
    """Images with person (non-crowd) GT boxes from a COCO instances JSON (rules of ``prepare-coco``)."""
    return ProbeImages(probe_files(annotations, images_dir, max_images), input_hw, preprocessing)


def folder_probe_images(images_dir: str | Path, input_hw: tuple[int, int], preprocessing,
                        max_images: int | None = None) -> ProbeImages:
    """Every image file in a folder (sorted), with plausible boxes instead of GT."""
    return ProbeImages(probe_files(None, images_dir, max_images), input_hw, preprocessing)


def probe_image_paths(annotations: str | Path | None, images_dir: str | Path,
                      max_images: int | None = None) -> list[Path]:
    """The files :func:`coco_probe_images` (with ``annotations``) or :func:`folder_probe_images` would use."""
    return [path for _, path, _ in probe_files(annotations, images_dir, max_images)]


def roi_sets(probe: ProbeImage, input_hw: tuple[int, int], large: int = 0) -> list[np.ndarray]:
    """ROI sets run on one image: 1 ROI, ``MANY_ROIS`` (GT + edge cases) and, if ``large``, that many."""
    one = probe.gt_rois[:1] if len(probe.gt_rois) else plausible_rois(1)
    sets = [one, probe_rois(probe.gt_rois, input_hw, MANY_ROIS)]
    if large:
        sets.append(probe_rois(probe.gt_rois, input_hw, large, seed=7))
    return sets


def check_feeds(
    input_hw: tuple[int, int], preprocessing: Preprocessing, images: Sequence[str | Path] | None = None, many: int = 8,
) -> list[dict[str, np.ndarray]]:
    """Feeds for verifying the simplified model: each image with 1 ROI and with ``many`` ROIs.

    ``images`` are image files (preprocessed like the model expects); without them one smooth
    synthetic image stands in. ROIs are plausible person boxes and the border/thin/whole-image edge
    cases (never uniform random boxes, which are degenerate).
    """
    if images:
        arrays = [preprocess(read_user_image(p), input_hw, preprocessing) for p in images]
    else:
        arrays = [smooth_image(input_hw, seed=0)]
    feeds = []
    for i, img in enumerate(arrays):
        feeds.append({DEFAULT_IMAGE_INPUT: img, FUSED_ROIS_INPUT: plausible_rois(1, seed=i)})
        feeds.append({DEFAULT_IMAGE_INPUT: img, FUSED_ROIS_INPUT: probe_rois(plausible_rois(2, seed=i), input_hw, many)})
    return feeds


def contract_roi_sets() -> list[np.ndarray]:
    """ROI sets of the robust contract: zero ROIs, and the awkward boxes (outside, reversed, non-finite)."""
    return [np.zeros((0, 4), np.float32), np.asarray(AWKWARD_ROIS, np.float32)]


def raw_feeds(feeds: list[dict[str, np.ndarray]], pre: Preprocessing) -> list[dict[str, np.ndarray]]:
    """Feeds of a tensor-input model as feeds of the raw-image model (uint8 BGR at the input size);
    the second feed also at another size (1.5 x 1.25), so the dynamic image size is exercised."""
    out = []
    for i, feed in enumerate(feeds):
        raw = raw_from_tensor(feed[DEFAULT_IMAGE_INPUT], pre)
        if i == 1:
            raw = np.ascontiguousarray(np.repeat(np.repeat(raw, 3, axis=0)[::2], 5, axis=1)[:, ::4])
        out.append({RAW_IMAGE_INPUT: raw, FUSED_ROIS_INPUT: feed[FUSED_ROIS_INPUT]})
    return out


def contract_feeds(image: np.ndarray) -> list[dict[str, np.ndarray]]:
    """:func:`contract_roi_sets` on ``image``, as feeds of the fused model."""
    return [{DEFAULT_IMAGE_INPUT: image, FUSED_ROIS_INPUT: rois} for rois in contract_roi_sets()]


def model_feeds(input_hw: tuple[int, int], pre: Preprocessing, image_input: ImageInput, names: Sequence[str],
                check_images: Sequence[str | Path] | None = None, contract: bool = True) -> list[dict[str, np.ndarray]]:
    """Feeds to verify a finished model of input ``names`` on: :func:`check_feeds` and :func:`contract_feeds`,
    raw images for a raw-image model, and only the inputs the model has: without ``rois`` (an instance
    model finds its own boxes) each image once, plus a black one (no detections). ``contract=False``: the
    images with plausible ROIs only (no empty, degenerate or non-finite ROI sets: int8 calibration)."""
    feeds = check_feeds(input_hw, pre, check_images)
    feeds += contract_feeds(feeds[0][DEFAULT_IMAGE_INPUT]) if contract else []
    if FUSED_ROIS_INPUT not in names:
        images = list({id(f[DEFAULT_IMAGE_INPUT]): f[DEFAULT_IMAGE_INPUT] for f in feeds}.values())
        feeds = [{DEFAULT_IMAGE_INPUT: image, FUSED_ROIS_INPUT: np.zeros((0, 4), np.float32)}
                 for image in [*images, *([np.zeros_like(images[0])] if contract else [])]]
    if ImageInput(image_input) is ImageInput.RAW:
        feeds = raw_feeds(feeds, pre)
    return [{k: v for k, v in feed.items() if k in names} for feed in feeds]
