"""``metrics.jsonl``: the per-epoch records of a run, one JSON object per line.

Rank 0 rewrites the file (atomically) after every epoch with the records of the earlier epochs
plus the new one (:func:`write_epoch_record`); a resumed run cuts it back to the epoch it resumes
from, because a later, abandoned run may have left more lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from roiseg.errors import InputError
from roiseg.utils.atomic import atomic_write


def read_metrics(metrics_jsonl: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` (one JSON object per line), one per epoch, sorted by epoch.

    A repeated epoch (a resumed run) keeps its last record. Raises :class:`InputError` naming the
    file and line for a line that is not a JSON object with an ``epoch``.
    """
    path = Path(metrics_jsonl)
    if not path.is_file():
        raise InputError(f"metrics file not found: {path}")
    by_epoch: dict[int, dict] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from exc
        if not isinstance(rec, dict) or not isinstance(rec.get("epoch"), int):
            raise InputError(f"{path}:{lineno}: expected a JSON object with an integer 'epoch'")
        by_epoch[rec["epoch"]] = rec
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_metrics(path: str | Path, records: list[dict]) -> None:
    """Write ``metrics.jsonl`` (one JSON record per epoch) atomically."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))


def write_epoch_record(path: str | Path, epoch: int, record: dict[str, Any] | None) -> None:
    """Keep the records of the epochs before ``epoch`` (when the file exists), then ``record`` (if any)."""
    path = Path(path)
    kept = [r for r in (read_metrics(path) if path.is_file() else []) if r["epoch"] < epoch]
    write_metrics(path, kept + ([record] if record is not None else []))


__all__ = ["read_metrics", "write_epoch_record", "write_metrics"]
