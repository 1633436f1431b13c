"""Write files under a temporary name and rename, so a crash never leaves a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import graph_tools
from roiseg.errors import InputError


def ensure_writable_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {p}: {exc.strerror or exc}") from exc
    if not os.access(p, os.W_OK | os.X_OK):
        raise InputError(f"output folder is not writable: {p}")
    return p


def check_output_file(path: str | Path) -> Path:
    """InputError, before any work, when ``path`` cannot become an output file.

    Refused: an existing folder at ``path``; a parent that is a file; an existing parent that is not
    writable. A missing parent is fine (it is created when the file is written). Nothing is created.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"output {p} is a folder; give a file name")
    parent = p.parent if str(p.parent) else Path(".")
    for folder in [parent, *parent.parents]:
        if folder.exists():
            if not folder.is_dir():
                raise InputError(f"output {p}: {folder} is a file, not a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"output {p}: folder {folder} is not writable")
            break
    return p


def check_output_dir(path: str | Path) -> Path:
    """InputError, before any work, when ``path`` cannot become an output folder.

    Refused: an existing file at ``path`` (or at one of its parents); an existing ancestor that is
    not writable. A missing folder is fine. Nothing is created.
    """
    p = Path(path)
    for folder in [p, *p.parents]:
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == p else f"lies under the file {folder}"
                raise InputError(f"output folder {p} {what}; give a folder")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise InputError(f"output folder {p}: {folder} is not writable")
            break
    return p


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success rename it to ``final`` (fsynced).

    The folder is created (InputError when it cannot be, or when ``final`` is a folder); on any
    exception the temporary file is removed and ``final`` is left untouched (a full disk: InputError
    "no space left on device writing FILE"); stale temporary files of ``final`` left by a killed
    writer are removed first (:func:`graph_tools.atomic_path`).
    """
    final = check_output_file(final)
    ensure_writable_dir(final.parent if str(final.parent) else Path("."))
    try:
        with graph_tools.atomic_path(final) as tmp:
            yield tmp
    except graph_tools.GraphError as exc:  # a full disk, named with the file
        raise InputError(str(exc)) from exc


def write_all(writers: dict[str | Path, Callable[[Path], Any]]) -> list[Path]:
    """Write several outputs all or none: each ``writer(tmp)`` fills a temporary file beside its final
    path; only when every one succeeded are they renamed into place (a failure, e.g. a full disk,
    removes every temporary file and leaves no output). Returns the final paths."""
    with contextlib.ExitStack() as stack:
        for final, writer in writers.items():
            writer(stack.enter_context(atomic_path(final)))
    return [Path(p) for p in writers]


def atomic_write(final: str | Path, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` and atomically move the result to ``final``."""
    with atomic_path(final) as tmp:
        writer(tmp)
    return Path(final)


def write_json(final: str | Path, obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON."""
    return atomic_write(final, lambda p: p.write_text(json.dumps(obj, indent=indent) + "\n"))


def write_bytes(final: str | Path, data: bytes) -> Path:
    return atomic_write(final, lambda p: p.write_bytes(data))
