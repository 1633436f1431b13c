"""A model's ``metadata_props`` as a ``{key: string}`` dict: read, replace, set one entry; and read straight
from a file's protobuf wire format (:func:`read_file_props`), without onnx and without reading weights."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Mapping

from graph_tools.errors import GraphError

if TYPE_CHECKING:
    import onnx

METADATA_PROPS_FIELD: int = 14
"""``ModelProto.metadata_props`` (repeated ``StringStringEntryProto``: key = field 1, value = field 2)."""


def read_props(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def write_props(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Replace ``metadata_props`` with ``props`` (in place)."""
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def set_prop(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set one entry (in place), replacing an existing one of the same key."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)


def _varint(f: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        byte = f.read(1)
        if not byte:
            raise EOFError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _payloads(f: BinaryIO, size: int, wanted: int) -> list[bytes]:
    """The bytes of every length-delimited field numbered ``wanted`` in a message of ``size`` bytes read
    from ``f``; every other field is skipped (seeked over, not read)."""
    out = []
    while f.tell() < size:
        field, wire = divmod(_varint(f), 8)
        if wire == 2:
            n = _varint(f)
            if field != wanted:
                f.seek(n, os.SEEK_CUR)
                continue
            data = f.read(n)
            if len(data) != n:
                raise EOFError("truncated field")
            out.append(data)
        elif wire == 0:
            _varint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, os.SEEK_CUR)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return out


def _string(entry: bytes, field: int) -> str:
    """The last string of ``field`` in a serialised message (protobuf: the last one wins), or ``""``."""
    found = _payloads(io.BytesIO(entry), len(entry), field)
    return found[-1].decode("utf-8") if found else ""


def read_file_props(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of the ONNX file at ``path`` as a dict, read from its protobuf wire format: the
    graph and its weights are skipped, onnx is not imported. GraphError naming the file when it is absent
    or no protobuf message."""
    p = Path(path)
    if not p.is_file():
        raise GraphError(f"ONNX model not found: {p}")
    try:
        with open(p, "rb") as f:
            entries = _payloads(f, os.fstat(f.fileno()).st_size, METADATA_PROPS_FIELD)
        return {_string(e, 1): _string(e, 2) for e in entries}
    except (EOFError, ValueError, UnicodeDecodeError) as exc:
        raise GraphError(f"not a readable ONNX model: {p} ({exc})") from exc
