"""``roiseg predict --source``: a fused model over an image, a folder, a glob, a video or a camera.

Frames are decoded ahead in a background thread (:func:`roiseg.runtime.sources.prefetch`, a bounded
queue: memory stays flat over a long video). An instance model finds the persons itself; a ROI model
takes its boxes from a COCO-format JSON (``--rois-json``: an instances file, matched to frames by file
name, or a list of detection results, matched by ``image_id`` = the file name's number or the frame
index). Outputs:

* ``--out``: overlays, a video of the same size and frame rate for a video or camera source (written
  under a temporary name, renamed when the stream ends), or a folder of ``<stem>.png`` for images;
* ``--save-json``: COCO results (``image_id``, ``category_id`` 1, ``bbox`` xywh, ``score``, RLE
  ``segmentation`` of the target mask), loadable with pycocotools' ``loadRes``. It is written atomically
  at the end; while the stream runs, ``<file>.partial`` holds the results so far as valid JSON.

Ctrl-C ends the stream cleanly: the overlays so far are kept (the video closed and renamed) and the
JSON is written with the finished frames.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from roiseg.conventions import TARGET
from roiseg.errors import InputError
from roiseg.runtime.draw import draw_overlay, write_image
from roiseg.runtime.instances import InstancePredictor
from roiseg.runtime.predict import RoiPredictor
from roiseg.runtime.session import FusedSession
from roiseg.runtime.sources import Frame, Source, open_source, prefetch
from roiseg.utils.atomic import atomic_path, check_output_dir, check_output_file, write_json
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)

PARTIAL_EVERY: int = 25
"""Frames between two rewrites of ``<save-json>.partial``."""
VIDEO_CODECS: dict[str, str] = {".mp4": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}
DEFAULT_FPS: float = 25.0


@dataclass
class StreamSummary:
    """What a stream did: ``frames`` run, frames/s, results kept, files written."""

    frames: int = 0
    seconds: float = 0.0
    results: int = 0
    written: list[Path] = field(default_factory=list)
    interrupted: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


class RoiTable:
    """Boxes of a ROI model's frames from a COCO-format JSON (module docstring)."""

    def __init__(self, path: Path) -> None:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--rois-json {path}: not a readable JSON file ({exc})") from exc
        anns = data.get("annotations") if isinstance(data, dict) else data
        if not isinstance(anns, list):
            raise InputError(f"--rois-json {path}: expected a COCO instances file or a list of detection results")
        self.ids = {im["file_name"]: im["id"] for im in data.get("images", [])} if isinstance(data, dict) else {}
        self.boxes: dict[int, list[list[float]]] = {}
        for a in anns:
            if a.get("category_id", 1) != 1 or a.get("iscrowd", 0) or "bbox" not in a or "image_id" not in a:
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            if np.isfinite([x, y, w, h]).all() and w > 0 and h > 0:
                self.boxes.setdefault(int(a["image_id"]), []).append([x, y, x + w, y + h])

    def image_id(self, frame: Frame) -> int:
        """The COCO id of a frame: by file name, else the file name's number, else the frame index."""
        stem = Path(frame.name).stem
        return self.ids.get(frame.name, int(stem) if stem.isdigit() else frame.index)

    def rois(self, image_id: int) -> np.ndarray:
        return np.asarray(self.boxes.get(image_id, []), np.float32).reshape(-1, 4)


def coco_results(image_id: int, boxes_px: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
    """COCO results of one frame: per ROI the RLE of its target mask, its box (xywh) and score."""
    out = []
    for box, score, lab in zip(boxes_px, scores, labels):
        rle = mask_utils.encode(np.asfortranarray((lab == TARGET).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = (float(v) for v in box)
        out.append({"image_id": int(image_id), "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": float(score), "segmentation": rle})
    return out


def _target_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mean target probability inside each predicted target mask (0 for an empty one): evaluate's score."""
    masks = labels == TARGET
    sums = (probs[:, TARGET] * masks).reshape(len(masks), -1).sum(axis=1)
    return np.where(masks.any(axis=(1, 2)), sums / np.maximum(masks.reshape(len(masks), -1).sum(axis=1), 1), 0.0)


class OverlaySink:
    """Overlay pictures: a video (same size and frame rate as the source) or a folder of PNGs."""

    def __init__(self, out: Path | None, source: Source) -> None:
        self.out, self.source, self.video = out, source, None
        self.as_video = out is not None and source.kind != "images"
        self._tmp_ctx = None
        if out is not None:
            (check_output_file if self.as_video else check_output_dir)(out)
            if self.as_video and out.suffix.lower() not in VIDEO_CODECS:
                raise InputError(f"--out {out}: an overlay video needs one of {', '.join(VIDEO_CODECS)}")

    def add(self, frame: Frame, overlay: np.ndarray) -> Path | None:
        if self.out is None:
            return None
        if not self.as_video:
            return write_image(self.out / f"{Path(frame.name).stem}.png", overlay)
        if self.video is None:
            self._tmp_ctx = atomic_path(self.out)
            tmp = self._tmp_ctx.__enter__()
            fourcc = cv2.VideoWriter_fourcc(*VIDEO_CODECS[self.out.suffix.lower()])
            h, w = overlay.shape[:2]
            self.video = cv2.VideoWriter(str(tmp.with_suffix(self.out.suffix)), fourcc, self.source.fps or DEFAULT_FPS, (w, h))
            self._tmp = tmp
        self.video.write(overlay)
        return None

    def close(self) -> list[Path]:
        """Finish the video (renamed into place); the written paths."""
        if self.video is None:
            return []
        self.video.release()
        self._tmp.with_suffix(self.out.suffix).replace(self._tmp)
        self._tmp_ctx.__exit__(None, None, None)
        return [self.out]


def run_stream(model: str | Path, spec: str, out: Path | None = None, save_json: Path | None = None,
               rois_json: Path | None = None, device: str = "auto") -> StreamSummary:
    """Run ``model`` over the frames of ``spec`` (module docstring)."""
    session = FusedSession(model, device)
    if not session.is_instance_model and rois_json is None:
        raise InputError(f"{model} is a ROI model: a stream needs its boxes, --rois-json FILE (COCO format)")
    if save_json is not None:
        check_output_file(save_json)
    source = open_source(spec)
    table = None if session.is_instance_model else RoiTable(rois_json)
    step = _instance_step(InstancePredictor(session)) if table is None else _roi_step(RoiPredictor(session), table)
    sink, summary, results = OverlaySink(out, source), StreamSummary(), []
    t0 = time.perf_counter()
    try:
        for frame in progress(prefetch(source.frames()), "predict", total=source.count, unit="frame"):
            frame_results, overlay = step(frame)
            results += frame_results
            if (path := sink.add(frame, overlay)) is not None:
                summary.written.append(path)
            summary.frames += 1
            if save_json is not None and summary.frames % PARTIAL_EVERY == 0:
                write_json(save_json.with_name(save_json.name + ".partial"), results, indent=None)
    except KeyboardInterrupt:
        summary.interrupted = True
        LOG.warning("interrupted after %d frame(s): writing what is finished", summary.frames)
    finally:
        summary.seconds = time.perf_counter() - t0
        summary.written += sink.close()
    if save_json is not None:
        summary.written.append(write_json(save_json, results, indent=None))
        save_json.with_name(save_json.name + ".partial").unlink(missing_ok=True)
    summary.results = len(results)
    return summary


def _instance_step(predictor: InstancePredictor):
    def step(frame: Frame) -> tuple[list[dict], np.ndarray]:
        pred = predictor.predict(frame.image)
        captions = [f"#{i} {s:.2f}" for i, s in enumerate(pred.scores, start=1)]
        return coco_results(frame.index, pred.rois_px, pred.scores, pred.labels), draw_overlay(frame.image, pred, captions)
    return step


def _roi_step(predictor: RoiPredictor, table: RoiTable):
    def step(frame: Frame) -> tuple[list[dict], np.ndarray]:
        image_id = table.image_id(frame)
        rois = table.rois(image_id)
        if not len(rois):
            return [], frame.image.copy()
        pred = predictor.predict(frame.image, rois)
        scores = _target_scores(pred.probs, pred.labels)
        return coco_results(image_id, pred.rois_px, scores, pred.labels), draw_overlay(frame.image, pred)
    return step


def iter_frames(spec: str) -> Iterator[Frame]:
    """The frames of ``spec`` decoded ahead (for callers that run a model themselves)."""
    return prefetch(open_source(spec).frames())
