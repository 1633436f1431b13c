"""A per-process cache of ONNX models, kept serialized: the work behind a model (a trim, an export, a
verified simplification) is done once per process for the same inputs, and every caller gets its own copy.

Bounded twice: by the number of entries and by their bytes (a model over ``max_bytes``, or over the 2 GB
that protobuf serializes in memory, is not kept). The least recently used entry goes first. Safe to use
from several threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Hashable

import onnx

from graph_tools.io import needs_external_data

DEFAULT_MAX_BYTES: int = 1 << 30
"""Bytes one cache keeps at most (1 GiB): a few detectors the size of a large YOLO, not an unbounded heap."""


class ModelCache:
    """Least-recently-used ``{key: (serialized model, value)}`` of at most ``size`` entries and ``max_bytes``
    serialized bytes; ``value`` is anything the caller keeps beside the model (an opset, a report)."""

    def __init__(self, size: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if size < 0 or max_bytes < 0:
            raise ValueError(f"cache size {size} and max_bytes {max_bytes} must be >= 0")
        self.size, self.max_bytes = size, max_bytes
        self._entries: OrderedDict[Hashable, tuple[bytes, Any]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[onnx.ModelProto, Any] | None:
        """The caller's own copy of the model kept under ``key`` and its value, or ``None``."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is None:
                return None
            self._entries[key] = entry  # now the most recently used
        return onnx.load_from_string(entry[0]), entry[1]

    def put(self, key: Hashable, model: onnx.ModelProto, value: Any = None) -> bool:
        """Keep ``model`` (serialized now: later changes to it do not reach the cache) and ``value`` under
        ``key``; ``False`` when the model is too large to keep."""
        if needs_external_data(model):
            return False
        data = model.SerializeToString()
        if len(data) > self.max_bytes or self.size == 0:
            return False
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes += len(data) - (len(old[0]) if old is not None else 0)
            self._entries[key] = (data, value)
            while len(self._entries) > self.size or self._bytes > self.max_bytes:
                _, (dropped, _) = self._entries.popitem(last=False)
                self._bytes -= len(dropped)
        return True

    def get_or_build(self, key: Hashable | None,
                     build: Callable[[], tuple[onnx.ModelProto, Any]]) -> tuple[onnx.ModelProto, Any]:
        """The caller's own copy of what is kept under ``key``, else ``build()``'s ``(model, value)``, kept
        under ``key`` (returned as built: the cache holds its own serialized copy). ``key`` ``None``: build,
        keep nothing."""
        kept = self.get(key) if key is not None else None
        if kept is not None:
            return kept
        model, value = build()
        if key is not None:
            self.put(key, model, value)
        return model, value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Serialized bytes kept now."""
        return self._bytes
