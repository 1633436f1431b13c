"""The one evaluation loop (detectron2's ``inference_on_dataset`` with a ``DatasetEvaluator``).

:func:`evaluate_dataset` runs an :class:`Evaluator` over the images it selected: each image is read
and prepared ahead in ``workers`` threads (OpenCV releases the GIL; :func:`prefetch_map`); a missing,
unreadable or wrongly sized image is skipped with a warning and counted (:data:`SKIP_REASONS`); the
evaluator runs the model on the others in the main thread, in order. The report holds what every
evaluation reports (annotation file, image folder, image counts, time) and the evaluator's own
figures (:meth:`Evaluator.summarize`). InputError (nothing written) for a missing image folder or when
no image could be read.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, TypeVar

import cv2
import numpy as np

from roiseg.errors import InputError
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)

SKIP_REASONS: dict[str, str] = {
    "missing": "not on disk", "unreadable": "not a readable image", "size_mismatch": "not the size the annotations give",
}
"""Why an image is skipped, and how the warning says it."""
T = TypeVar("T")
R = TypeVar("R")


class Evaluator(Protocol):
    """One kind of evaluation: which images, what a worker prepares, what the main thread does per image."""

    def records(self) -> list[dict]:
        """The COCO image records to evaluate (``id``, ``file_name``, ``height``, ``width``), in order."""

    def prepare(self, record: dict, image_bgr: np.ndarray) -> Any:
        """In a worker thread: what :meth:`process` needs of one read image ([H0, W0, 3] uint8 BGR)."""

    def process(self, record: dict, prepared: Any) -> None:
        """In the main thread: run the model on one prepared image and keep its figures."""

    def summarize(self) -> dict[str, Any]:
        """The evaluator's part of the report, over the processed images."""


def prefetch_map(fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int | None = None) -> Iterator[R]:
    """``map(fn, items)`` in order, computed ahead by ``workers`` threads (at most ``depth`` results
    waiting, default ``2 * workers``); ``workers <= 0`` runs in the calling thread."""
    if workers <= 0:
        yield from map(fn, items)
        return
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="roiseg-eval") as pool:
        pending: deque[Future] = deque(pool.submit(fn, x) for x in islice(it, depth or 2 * workers))
        try:
            while pending:
                result = pending.popleft().result()
                for x in islice(it, 1):
                    pending.append(pool.submit(fn, x))
                yield result
        finally:
            for fut in pending:
                fut.cancel()


def read_record(record: dict, images_dir: Path) -> tuple[str, np.ndarray | None]:
    """``("ok", [H0, W0, 3] uint8 BGR)`` of a COCO image record, or ``(skip reason, None)``."""
    path = images_dir / record["file_name"]
    if not path.is_file():
        return "missing", None
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return "unreadable", None
    if image.shape[:2] != (int(record["height"]), int(record["width"])):
        return "size_mismatch", None
    return "ok", image


def evaluate_dataset(evaluator: Evaluator, annotations: str | Path, images_dir: str | Path, *, workers: int = 2,
                     show_progress: bool = True) -> dict[str, Any]:
    """Run ``evaluator`` over its images in ``images_dir`` (module docstring); the JSON-ready report."""
    annotations, images_dir = Path(annotations), Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    records = evaluator.records()

    def prepare(record: dict) -> tuple[dict, str, Any]:
        status, image = read_record(record, images_dir)
        return record, status, evaluator.prepare(record, image) if image is not None else None

    skipped: Counter = Counter()
    evaluated = 0
    start = time.perf_counter()
    prepared = prefetch_map(prepare, records, workers)
    for record, status, data in progress(prepared, desc="evaluate", total=len(records), unit="img",
                                         disable=not show_progress):
        if status != "ok":
            skipped[status] += 1
            LOG.warning("image id %s: %s is %s; skipped", record["id"], images_dir / record["file_name"],
                        SKIP_REASONS[status])
            continue
        evaluator.process(record, data)
        evaluated += 1
    if not evaluated:
        raise InputError(f"none of the {len(records)} selected images of {annotations} could be read from {images_dir}")
    report = {"annotations": str(annotations), "images_dir": str(images_dir),
              "images": {"selected": len(records), "evaluated": evaluated,
                         "skipped": {r: int(skipped[r]) for r in SKIP_REASONS}},
              **evaluator.summarize()}
    elapsed = time.perf_counter() - start
    report.update(time_s=elapsed, images_per_s=len(records) / max(elapsed, 1e-9))
    return report
