"""A generated COCO-format person dataset in the layout of ``data/`` (for tests and the demo).

:func:`write_synthetic_coco` writes ``root/annotations/instances_{train,val}2017.json`` (original
instances format: person polygons in pixel coordinates, a few non-person annotations, and, in
each split with >= 2 images, one image with a crowd person so that ``prepare-coco`` has an image
to drop) and ``root/images/{train,val}2017/<id:012d>.jpg``.

Each image shows 2-5 person-like figures (head circle, torso ellipse, arms and legs as thick
lines) that overlap each other; each has its own colours and stripe texture on a textured,
cluttered background. A figure's annotation is its *visible* part (figures drawn later occlude
earlier ones), traced into polygons with OpenCV, so occluded figures and some unoccluded ones
(annotated as head + body) consist of several polygons. The image is painted from the annotation
masks themselves, so pixels and labels agree. Everything is deterministic in ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from roiseg.conventions import COCO_PERSON_CATEGORY_ID
from roiseg.utils.atomic import atomic_write

CATEGORIES: list[dict[str, Any]] = [
    {"supercategory": "person", "id": COCO_PERSON_CATEGORY_ID, "name": "person"},
    {"supercategory": "vehicle", "id": 2, "name": "bicycle"},
    {"supercategory": "vehicle", "id": 3, "name": "car"},
]
SPLITS: tuple[str, str] = ("train2017", "val2017")
MIN_VISIBLE_AREA: int = 40  # px; more occluded figures are not annotated (and not painted)
MIN_POLYGON_AREA: float = 4.0  # px; smaller traced fragments are dropped


@dataclass
class _Figure:
    body: np.ndarray  # [H, W] uint8 full silhouette (0/1)
    head: np.ndarray  # [H, W] uint8 head disc (0/1), a part of body


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
def _draw_figure(hw: tuple[int, int], rng: np.random.Generator, cx: float, top: float, height: float) -> _Figure:
    """Silhouette of a standing person ``height`` px tall whose head top is at ``(cx, top)``."""
    h, w = hw
    body = np.zeros((h, w), dtype=np.uint8)
    head = np.zeros((h, w), dtype=np.uint8)
    u = height
    r_head = max(2, int(round(0.09 * u)))
    head_c = (int(round(cx + rng.normal(0, 0.02 * u))), int(round(top + r_head)))
    cv2.circle(head, head_c, r_head, 1, -1)
    neck_y = top + 2 * r_head
    torso_c = (int(round(cx)), int(round(neck_y + 0.2 * u)))
    torso_axes = (max(2, int(0.12 * u * rng.uniform(0.8, 1.25))), max(3, int(0.21 * u)))
    cv2.ellipse(body, torso_c, torso_axes, float(rng.uniform(-10, 10)), 0, 360, 1, -1)
    limb = max(2, int(round(0.06 * u)))
    shoulder_y, hip_y = neck_y + 0.06 * u, neck_y + 0.37 * u
    for side in (-1, 1):
        shoulder = np.array([cx + side * 0.11 * u, shoulder_y])
        elbow = shoulder + 0.17 * u * np.array([side * np.sin(rng.uniform(0.1, 1.2)), np.cos(rng.uniform(0.0, 0.6))])
        hand = elbow + 0.16 * u * np.array([side * np.sin(rng.uniform(-0.3, 1.4)), np.cos(rng.uniform(-0.6, 0.8))])
        hip = np.array([cx + side * 0.06 * u, hip_y])
        foot = np.array([cx + side * rng.uniform(0.03, 0.16) * u, top + u])
        knee = (hip + foot) / 2 + np.array([side * rng.uniform(-0.03, 0.05) * u, 0.0])
        for a, b, t in ((shoulder, elbow, limb), (elbow, hand, limb), (hip, knee, int(limb * 1.4)), (knee, foot, int(limb * 1.3))):
            cv2.line(body, tuple(int(v) for v in np.round(a)), tuple(int(v) for v in np.round(b)), 1, t, cv2.LINE_8)
    body |= head
    return _Figure(body=body, head=head)


def _texture(rng: np.random.Generator, pixels: tuple[np.ndarray, np.ndarray], base: np.ndarray, contrast: float) -> np.ndarray:
    """[N, 3] float32 BGR values for the pixels ``(rows, cols)``: a base colour modulated by
    oriented stripes and pixel noise."""
    ys, xs = (p.astype(np.float32) for p in pixels)
    theta, freq = rng.uniform(0, np.pi), rng.uniform(0.15, 0.6)
    stripes = np.sin((xs * np.float32(np.cos(theta)) + ys * np.float32(np.sin(theta))) * np.float32(freq)
                     + np.float32(rng.uniform(0, 2 * np.pi)))
    tint = (0.6 + 0.4 * rng.uniform(-1, 1, size=3)).astype(np.float32)
    noise = rng.standard_normal(size=(len(xs), 1), dtype=np.float32) * np.float32(8.0)
    return base[None, :] + np.float32(contrast) * stripes[:, None] * tint[None, :] + noise


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    hsv = np.array([[[rng.integers(0, 180), rng.integers(90, 256), rng.integers(90, 240)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _background(hw: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Textured, cluttered background and its non-person objects ``[{"category_id", "mask"}]``."""
    h, w = hw
    c0, c1 = rng.uniform(40, 200, size=3).astype(np.float32), rng.uniform(40, 200, size=3).astype(np.float32)
    ramp = (np.arange(w, dtype=np.float32)[None, :] / w * np.float32(np.cos(rng.uniform(0, np.pi)))
            + np.arange(h, dtype=np.float32)[:, None] / h * np.float32(np.sin(rng.uniform(0, np.pi))))
    ramp = np.clip(ramp, 0, 1)
    noise = rng.standard_normal(size=(h, w), dtype=np.float32) * np.float32(10.0)
    img = cv2.merge([c0[c] + (c1[c] - c0[c]) * ramp + noise for c in range(3)])  # [H, W, 3] float32
    objects = []
    for _ in range(rng.integers(2, 5)):  # clutter: rectangles and ellipses, some annotated as vehicles
        m = np.zeros((h, w), dtype=np.uint8)
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        x1, y1 = min(w - 1, x0 + int(rng.integers(8, w // 3))), min(h - 1, y0 + int(rng.integers(8, h // 4)))
        if rng.random() < 0.5:
            cv2.rectangle(m, (x0, y0), (x1, y1), 1, -1)
        else:
            box = (((x0 + x1) / 2, (y0 + y1) / 2), (float(x1 - x0), float(y1 - y0)), float(rng.uniform(0, 180)))
            cv2.ellipse(m, box, 1, -1)
        where = np.nonzero(m)
        img[where] = _texture(rng, where, _random_colour(rng), 25.0)
        if rng.random() < 0.4:
            objects.append({"category_id": int(rng.choice([2, 3])), "mask": m})
    return img, objects


# --------------------------------------------------------------------------------------------
# Annotations
# --------------------------------------------------------------------------------------------
def _polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer contours of a 0/1 mask as COCO polygons (pixel coordinates of pixel centres)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        if len(c) >= 3 and cv2.contourArea(c) >= MIN_POLYGON_AREA:
            polys.append((c.reshape(-1).astype(np.float64) + 0.5).tolist())
    return polys


def _annotation(ann_id: int, image_id: int, category_id: int, segmentation: Any, rle: dict, iscrowd: int) -> dict:
    return {
        "id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": iscrowd,
        "segmentation": segmentation, "area": float(mask_utils.area(rle)),
        "bbox": [round(float(v), 2) for v in mask_utils.toBbox(rle)],
    }


def _scene(hw: tuple[int, int], rng: np.random.Generator, persons: tuple[int, int], crowd: bool) -> tuple[np.ndarray, list[dict]]:
    """One image (uint8 BGR) and its annotations as ``{"category_id", "segmentation", "rle", "iscrowd"}``."""
    h, w = hw
    img, objects = _background(hw, rng)
    anns = [{"category_id": o["category_id"], "segmentation": _polygons(o["mask"]), "iscrowd": 0} for o in objects]
    n = int(rng.integers(persons[0], persons[1] + 1))
    group_x = rng.uniform(0.3, 0.7) * w  # figures cluster around a point so that they overlap
    figures = []
    for _ in range(n):
        height = rng.uniform(0.45, 0.9) * h
        cx = float(np.clip(group_x + rng.normal(0, 0.18 * w), 0.05 * w, 0.95 * w))
        top = rng.uniform(0.0, max(1.0, h - height * 0.9))
        figures.append(_draw_figure(hw, rng, cx, top, height))
    if crowd:  # a row of small figures at the bottom, annotated as one crowd region
        crowd_mask = np.zeros((h, w), dtype=np.uint8)
        for x in np.linspace(0.1 * w, 0.9 * w, 6):
            crowd_mask |= _draw_figure(hw, rng, float(x), 0.78 * h, 0.2 * h).body
        figures.insert(0, _Figure(body=crowd_mask, head=np.zeros_like(crowd_mask)))
    occluders = np.zeros((h, w), dtype=np.uint8)
    visible = []
    for fig in reversed(figures):  # front to back: the last drawn figure is fully visible
        visible.append(fig.body & (1 - occluders))
        occluders |= fig.body
    visible.reverse()

    for k, (fig, vis) in enumerate(zip(figures, visible)):
        if int(vis.sum()) < MIN_VISIBLE_AREA:
            continue
        if crowd and k == 0:
            rle = mask_utils.encode(np.asfortranarray(vis))
            seg = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            anns.append({"category_id": COCO_PERSON_CATEGORY_ID, "segmentation": seg, "iscrowd": 1, "rle": rle})
            continue
        if rng.random() < 0.4:  # annotate head and body as separate polygons
            polys = _polygons(vis & fig.head) + _polygons(vis & (1 - fig.head))
        else:
            polys = _polygons(vis)
        if polys:
            anns.append({"category_id": COCO_PERSON_CATEGORY_ID, "segmentation": polys, "iscrowd": 0, "figure": k})

    for ann in anns:  # labels are the truth: rasterise them and paint the figures from them
        if "rle" not in ann:
            ann["rle"] = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], h, w)) if ann["segmentation"] else None
    anns = [a for a in anns if a["rle"] is not None and mask_utils.area(a["rle"]) > 0]
    skin = rng.uniform(60, 220, size=3).astype(np.float32)
    for ann in anns:  # back to front, as the figures were drawn
        if ann["category_id"] != COCO_PERSON_CATEGORY_ID:
            continue
        m = mask_utils.decode(ann["rle"]).astype(bool)
        where = np.nonzero(m)
        clothes = _texture(rng, where, _random_colour(rng), float(rng.uniform(15, 45)))
        if "figure" in ann:  # the head disc gets a skin-like tone
            head = figures[ann["figure"]].head.astype(bool)[where]
            tone = skin + rng.normal(0, 20, size=3).astype(np.float32)
            clothes[head] = 0.7 * tone + 0.3 * clothes[head]
        img[where] = clothes
    return np.clip(img, 0, 255).astype(np.uint8), anns


def write_synthetic_coco(
    root: str | Path,
    n_train: int,
    n_val: int,
    image_hw: tuple[int, int] = (240, 320),
    seed: int = 0,
    persons: tuple[int, int] = (2, 5),
    crowd: bool = True,
    jpeg_quality: int = 92,
) -> dict:
    """Write a generated COCO person dataset under ``root`` in the layout of ``data/``.

    ``image_hw``: (H, W) pixels of every image. ``persons``: inclusive range of figures per image.
    ``crowd``: put one crowd-person image in each split that has >= 2 images (``prepare-coco``
    drops it). Returns ``{"root", "annotations": {split: path}, "images": {split: dir},
    "num_images": {split: n}, "num_persons": {split: n}, "crowd_image_ids": {split: [ids]}}``
    where splits are ``train2017`` and ``val2017`` and ``num_persons`` counts non-crowd persons.
    """
    root = Path(root)
    if persons[0] < 1 or persons[1] < persons[0]:
        raise ValueError(f"persons must be a range (lo, hi) with 1 <= lo <= hi, got {persons}")
    report: dict[str, Any] = {"root": str(root), "annotations": {}, "images": {}, "num_images": {},
                              "num_persons": {}, "crowd_image_ids": {}}
    ann_id = 1
    for split_no, (split, n) in enumerate(zip(SPLITS, (n_train, n_val))):
        rng = np.random.default_rng((seed, split_no))
        image_dir = root / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        crowd_index = 1 if crowd and n >= 2 else -1
        images, annotations, crowd_ids = [], [], []
        for i in range(n):
            image_id = (split_no + 1) * 100_000 + i + 1
            pixels, anns = _scene(image_hw, rng, persons, crowd=i == crowd_index)
            file_name = f"{image_id:012d}.jpg"
            ok, buf = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            if not ok:
                raise RuntimeError(f"could not encode {file_name}")
            (image_dir / file_name).write_bytes(buf.tobytes())
            images.append({"id": image_id, "file_name": file_name, "height": image_hw[0], "width": image_hw[1], "license": 0})
            for a in anns:
                annotations.append(_annotation(ann_id, image_id, a["category_id"], a["segmentation"], a["rle"], a["iscrowd"]))
                ann_id += 1
            if i == crowd_index:
                crowd_ids.append(image_id)
        dataset = {
            "info": {"description": f"roiseg synthetic persons, seed {seed}", "version": "1.0"},
            "licenses": [{"id": 0, "name": "generated", "url": ""}],
            "images": images, "annotations": annotations, "categories": CATEGORIES,
        }
        ann_path = root / "annotations" / f"instances_{split}.json"
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(ann_path, lambda p, d=dataset: p.write_text(json.dumps(d)))
        report["annotations"][split] = str(ann_path)
        report["images"][split] = str(image_dir)
        report["num_images"][split] = n
        report["num_persons"][split] = sum(
            1 for a in annotations if a["category_id"] == COCO_PERSON_CATEGORY_ID and not a["iscrowd"]
        )
        report["crowd_image_ids"][split] = crowd_ids
    return report
