"""Frames from an image, a folder, a glob, a video file or a camera, decoded in a background thread.

:func:`open_source` reads ``--source``: an integer is an OpenCV camera index; an existing folder
gives its images in name order; a path with ``*``, ``?`` or ``[`` is a glob of image files; a file
with an image suffix is one image; any other file is opened as a video (OpenCV). Each frame is a
:class:`Frame` (``index`` from 0, ``name``: the image's file name or ``frame_000123``, ``image``: [H, W, 3]
uint8 BGR). :func:`prefetch` decodes ahead in a thread through a bounded queue, so memory stays flat
however long the stream.
"""

from __future__ import annotations

import glob as globlib
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from roiseg.conventions import read_image
from roiseg.errors import InputError

IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
QUEUE_FRAMES: int = 8
"""Frames decoded ahead at most (the bounded queue of :func:`prefetch`)."""


@dataclass
class Frame:
    """One image of a source: ``index`` (0, 1, ...), ``name`` (file name, or ``frame_NNNNNN``), ``image`` [H, W, 3] uint8 BGR."""

    index: int
    name: str
    image: np.ndarray


@dataclass
class Source:
    """What :func:`open_source` found: ``kind`` (``images``, ``video`` or ``camera``), the frame count when
    known, the frame rate (videos and cameras; 0 when unknown) and the frame size ``(H, W)`` (videos)."""

    spec: str
    kind: str
    count: int | None
    fps: float
    size: tuple[int, int] | None
    paths: list[Path]

    def frames(self) -> Iterator[Frame]:
        """The frames in order (decoded in the calling thread: wrap in :func:`prefetch`)."""
        if self.kind == "images":
            for i, path in enumerate(self.paths):
                try:
                    yield Frame(i, path.name, read_image(path))
                except (FileNotFoundError, ValueError) as exc:
                    raise InputError(f"--source {self.spec}: {exc}") from exc
            return
        cap = _capture(self.spec, self.kind)
        try:
            i = 0
            while True:
                ok, image = cap.read()
                if not ok:
                    return
                yield Frame(i, f"frame_{i:06d}", image)
                i += 1
        finally:
            cap.release()


def _capture(spec: str, kind: str) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(int(spec)) if kind == "camera" else cv2.VideoCapture(spec)
    if not cap.isOpened():
        raise InputError(f"--source {spec}: cannot open it as {'a camera' if kind == 'camera' else 'a video or an image'}")
    return cap


def open_source(spec: str | Path) -> Source:
    """The source named by ``spec`` (module docstring); InputError when it names nothing readable."""
    text = str(spec)
    if text.isdigit():
        cap = _capture(text, "camera")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        cap.release()
        return Source(text, "camera", None, fps, None, [])
    path = Path(text)
    if path.is_dir():
        paths = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        return _images(text, paths, "folder")
    if any(c in text for c in "*?["):
        return _images(text, sorted(Path(p) for p in globlib.glob(text) if Path(p).suffix.lower() in IMAGE_SUFFIXES), "glob")
    if not path.is_file():
        raise InputError(f"--source {text}: no such file, folder or camera index")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return Source(text, "images", 1, 0.0, None, [path])
    cap = _capture(text, "video")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
    cap.release()
    return Source(text, "video", count, fps, size, [])


def _images(spec: str, paths: list[Path], what: str) -> Source:
    if not paths:
        raise InputError(f"--source {spec}: the {what} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return Source(spec, "images", len(paths), 0.0, None, paths)


def prefetch(frames: Iterator[Frame], depth: int = QUEUE_FRAMES) -> Iterator[Frame]:
    """``frames`` decoded in a background thread, at most ``depth`` ahead; an error there is raised here.
    Closing the iterator early (Ctrl-C, an error downstream) stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for frame in frames:
                if not put(frame):
                    return
            put(done)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    thread = threading.Thread(target=work, name="roiseg-decode", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
