"""Reading and writing ONNX files: clear errors, atomic writes, external data past protobuf's 2 GB."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from graph_tools.errors import GraphError
from graph_tools.log import get_logger

if TYPE_CHECKING:  # onnx is imported where a model is read or written: atomic writes need none of it
    import onnx

LOG = get_logger(__name__)

PROTOBUF_LIMIT_BYTES: int = 2**31 - 1
EXTERNAL_MARGIN_BYTES: int = 64 * 2**20
TEMP_SUFFIX: str = ".tmp"
"""Temporary files are ``.<final name>.pid<pid>.<random>.tmp`` beside the final file (``<pid>``: the
writer's process id; ``<random>``: :func:`tempfile.mkstemp`'s 8 characters)."""
STALE_TEMP_AGE_S: float = 24 * 3600.0
"""A temporary file of ours untouched for this long is stale whatever its process id says."""
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's name sequence


def _temp_pattern(final_name: str) -> re.Pattern[str]:
    """``.<name>.pid<pid>.<random>.tmp`` (group 1: pid) or the pid-less ``.<name>.<random>.tmp`` of older writers."""
    return re.compile(rf"^\.{re.escape(final_name)}\.(?:pid(\d+)\.)?{_RANDOM}{re.escape(TEMP_SUFFIX)}$")


def _process_running(pid: int) -> bool:
    """True when a process ``pid`` exists on this machine (also one of another user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # exists (another user's), or cannot tell: keep the file
    return True


def clean_stale_temps(final: str | Path, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the temporary files :func:`atomic_path` left beside ``final`` when a writer was killed.

    Only names of our own pattern for this very ``final`` are considered. One is stale when the
    process id in its name is not running on this machine, or when it was not modified for
    ``max_age_s`` seconds (also for pid-less names of older versions, and in case the pid was reused
    or belongs to another machine sharing the folder). A live writer keeps its file: its pid runs
    and it writes the file now. Each removal is logged (warning). Returns the removed paths.
    """
    final = Path(final)
    folder = final.parent if str(final.parent) else Path(".")
    if not folder.is_dir():
        return []
    pattern, now, removed = _temp_pattern(final.name), time.time(), []
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match is None or not entry.is_file():
            continue
        try:
            stat = entry.stat()
        except FileNotFoundError:
            continue  # its writer just renamed or removed it
        pid = int(match.group(1)) if match.group(1) else None
        dead = pid is not None and not _process_running(pid)
        if not (dead or now - stat.st_mtime > max_age_s):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
            why = f"process {pid} is not running" if dead else f"untouched for {(now - stat.st_mtime) / 3600:.1f} h"
            LOG.warning("removed stale temporary file %s (%.1f MB; %s)", entry, stat.st_size / 1e6, why)
    return removed


def clean_stale_temp_dirs(prefix: str, root: str | Path | None = None, max_age_s: float = STALE_TEMP_AGE_S) -> list[Path]:
    """Remove the folders :func:`temp_dir` made with ``prefix`` in ``root`` (default: the system temp
    folder) whose process is not running (killed, e.g. ``kill -9``) or that were untouched for
    ``max_age_s`` seconds. Each removal is logged (warning). Returns the removed folders."""
    root = Path(root or tempfile.gettempdir())
    pattern = re.compile(rf"^{re.escape(prefix)}pid(\d+)_")
    removed, now = [], time.time()
    for entry in root.glob(f"{glob_escape(prefix)}pid*_*"):
        match = pattern.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        with contextlib.suppress(FileNotFoundError):
            dead = not _process_running(int(match.group(1)))
            age = now - entry.stat().st_mtime
            if dead or age > max_age_s:
                size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
                why = f"process {match.group(1)} is not running" if dead else f"untouched for {age / 3600:.1f} h"
                LOG.warning("removed stale temporary folder %s (%.1f MB; %s)", entry, size / 1e6, why)
    return removed


@contextlib.contextmanager
def temp_dir(prefix: str, root: str | Path | None = None) -> Iterator[Path]:
    """A temporary folder ``<prefix>pid<pid>_<random>`` removed on exit, like
    :class:`tempfile.TemporaryDirectory`; the stale folders of killed processes with the same prefix
    are removed first (:func:`clean_stale_temp_dirs`), so a ``kill -9`` leaves litter only until the
    next run."""
    clean_stale_temp_dirs(prefix, root)
    with tempfile.TemporaryDirectory(prefix=f"{prefix}pid{os.getpid()}_", dir=root) as tmp:
        yield Path(tmp)


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def load_model(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file (external data included); :class:`GraphError` naming the file when it cannot."""
    import onnx
    from google.protobuf.message import DecodeError

    p = Path(path)
    if not p.is_file():
        raise GraphError(f"ONNX model not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=load_external_data)
    except (DecodeError, RuntimeError, ValueError, OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as exc:
        raise GraphError(f"not a readable ONNX model: {p} ({type(exc).__name__}: {str(exc)[:200]})") from exc
    if not model.graph.node and not model.graph.output:
        raise GraphError(f"not an ONNX model (empty graph): {p}")
    return model


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success fsync it and rename it to ``final``.

    On any exception the temporary file is removed and ``final`` is left untouched. The folder is
    created when missing; a folder at ``final`` is refused (:class:`GraphError`) before anything is
    written. Stale temporary files of ``final`` left by a killed writer are removed first
    (:func:`clean_stale_temps`).
    """
    final = Path(final)
    if final.is_dir():
        raise GraphError(f"output {final} is a folder; give a file name")
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.pid{os.getpid()}.", suffix=TEMP_SUFFIX, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, final)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if disk_full(exc, final.parent):
            raise GraphError(f"no space left on device writing {final}") from exc
        raise


NO_SPACE_ERRNOS: frozenset[int] = frozenset({errno.ENOSPC, errno.EDQUOT})
LOW_SPACE_BYTES: int = 16 * 2**20
"""Free space below which a writer's non-OSError failure (e.g. torch.save's) is taken for a full disk."""


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc``, raised while writing into ``folder``, means the disk (or quota) is full:
    an OSError with ENOSPC/EDQUOT, or a RuntimeError (a library's own writer) with less than
    :data:`LOW_SPACE_BYTES` free left there."""
    if isinstance(exc, OSError):
        return exc.errno in NO_SPACE_ERRNOS
    if isinstance(exc, RuntimeError):
        with contextlib.suppress(OSError):
            return shutil.disk_usage(folder).free < LOW_SPACE_BYTES
    return False


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the serialised model would not fit in one protobuf (2 GB)."""
    return model.ByteSize() > PROTOBUF_LIMIT_BYTES - EXTERNAL_MARGIN_BYTES


def save_model(model: onnx.ModelProto, path: str | Path, external: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically.

    ``external=None`` chooses external data (weights in ``<name>.data`` beside the file) only when
    the model is too big for one protobuf. The data file is written before the ``.onnx`` file is
    renamed into place, so a reader never sees an ``.onnx`` whose data is missing.
    """
    import onnx

    path = Path(path)
    if external is None:
        external = needs_external_data(model)
    with atomic_path(path) as tmp:
        if external:
            data_name = f"{path.name}.data"
            (path.parent / data_name).unlink(missing_ok=True)
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            # onnx writes the data next to tmp under data_name, i.e. already at its final place.
        else:
            onnx.save_model(model, str(tmp))
    return path
