"""Throughput of ``roiseg analyze`` on a large person JSON.

Builds a person-only JSON of at least ``--instances`` person instances by replicating a small one
(default: the coco-tiny train set in ``../shared``, or generated data when it is absent) with new
image and annotation ids, runs :func:`roiseg.data.analyze.analyze` on it and prints instances/s.

    uv run python bench/bench_analyze.py [--instances 50000] [--workers N] [--source JSON]
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from roiseg.data.analyze import analyze, default_workers
from roiseg.data.coco import load_coco_json
from roiseg.data.prepare import person_only_dataset, select_persons

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO.parent / "shared" / "coco-tiny" / "annotations" / "instances_train2017.json"


def replicate(source: Path, min_instances: int) -> dict:
    """A person-only COCO dict with >= ``min_instances`` persons: copies of ``source``'s images."""
    data = load_coco_json(source)
    sel = select_persons(data, source)
    by_image = sel.by_image()
    images, annotations = [], []
    copy = 0
    while len(annotations) < min_instances:
        for img in sel.images:
            new_id = copy * 10_000_000 + img["id"]
            images.append({**img, "id": new_id})
            for ann in by_image[img["id"]]:
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": new_id})
        copy += 1
    return person_only_dataset(data, images, annotations)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=50_000, help="minimum number of person instances")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--source", type=Path, default=None, help="person JSON to replicate (default: coco-tiny train)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source = args.source
        if source is None:
            source = DEFAULT_SOURCE
            if not source.is_file():
                from roiseg.synthetic.coco import write_synthetic_coco

                source = Path(write_synthetic_coco(Path(tmp) / "synthetic", 64, 0, image_hw=(480, 640))["annotations"]["train2017"])
        big = replicate(source, args.instances)
        path = Path(tmp) / "bench_person_only.json"
        path.write_text(json.dumps(big))
        workers = args.workers or default_workers()
        cpu_start = _cpu_seconds()
        start = time.perf_counter()
        result = analyze(path, workers=workers)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu_start
    n = result["num_instances"]
    print(f"source: {source}")
    print(f"{n} instances, {result['num_images']} images, {workers} worker(s): {seconds:.2f} s, "
          f"{n / seconds:.0f} instances/s (including loading the JSON)")
    print(f"CPU time (this process + workers): {cpu:.2f} s, {n / cpu:.0f} instances per CPU-second")


if __name__ == "__main__":
    main()
