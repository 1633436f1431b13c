"""A file's identity as it is on disk, for per-process caches of what was read from it."""

from __future__ import annotations

import os
from pathlib import Path

Stamp = tuple[int, int, int]


def file_stamp(path: str | Path) -> Stamp | None:
    """(modification time in ns, size in bytes, inode) of ``path``, or ``None`` when it cannot be read:
    a cache keyed on it reads a rewritten or replaced file again."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def stamped_key(path: str | Path, *parts: object) -> tuple | None:
    """``(resolved path, file_stamp, *parts)``: a cache key for what is read from ``path``, taken before it is
    read (a file replaced meanwhile is not kept under its new stamp); ``None`` (keep nothing) when it cannot
    be read. A file rewritten in place within one mtime tick at the same size, or only its external data
    rewritten, is not seen."""
    stamp = file_stamp(path)
    return None if stamp is None else (str(Path(path).resolve()), stamp, *parts)
