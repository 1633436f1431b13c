"""Reading and writing ONNX files: clear errors, atomic writes, external data past protobuf's 2 GB."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import onnx
from google.protobuf.message import DecodeError

from graph_tools.errors import GraphError

PROTOBUF_LIMIT_BYTES: int = 2**31 - 1
EXTERNAL_MARGIN_BYTES: int = 64 * 2**20
TEMP_SUFFIX: str = ".tmp"
"""Temporary files are ``.<final name>.<random>.tmp`` beside the final file."""


def load_model(path: str | Path, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX file (external data included); :class:`GraphError` naming the file when it cannot."""
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
    created when missing.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TEMP_SUFFIX, dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the serialised model would not fit in one protobuf (2 GB)."""
    return model.ByteSize() > PROTOBUF_LIMIT_BYTES - EXTERNAL_MARGIN_BYTES


def save_model(model: onnx.ModelProto, path: str | Path, external: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically.

    ``external=None`` chooses external data (weights in ``<name>.data`` beside the file) only when
    the model is too big for one protobuf. The data file is written before the ``.onnx`` file is
    renamed into place, so a reader never sees an ``.onnx`` whose data is missing.
    """
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
