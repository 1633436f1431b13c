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
