"""graph_tools.ModelCache: the per-process model cache behind the trim, export and simplification caches."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

from graph_tools.build import GraphBuilder, value_info
from graph_tools.cache import ModelCache


def _model(width: int, name: str = "m"):
    b = GraphBuilder(f"{name}/")
    b.op("Mul", ["x", b.const(np.arange(width, dtype=np.float32))], outputs=["y"])
    return b.model([value_info("x", TensorProto.FLOAT, [width])], [value_info("y", TensorProto.FLOAT, [width])], 17, 8)


def test_every_caller_gets_its_own_copy_and_the_cache_keeps_what_was_put():
    cache = ModelCache(2)
    model = _model(4)
    assert cache.get("a") is None
    assert cache.put("a", model, value=17)
    model.graph.node[0].name = "changed after put"
    first, value = cache.get("a")
    assert value == 17 and first.graph.node[0].name != "changed after put" and first is not model
    first.graph.node[0].name = "changed by a caller"
    second, _ = cache.get("a")
    assert second.graph.node[0].name not in ("changed after put", "changed by a caller")


def test_the_least_recently_used_goes_first_by_count_and_by_bytes():
    cache = ModelCache(2)
    for key in ("a", "b"):
        cache.put(key, _model(4, key))
    assert cache.get("a") is not None  # "a" is now the most recently used
    cache.put("c", _model(4, "c"))
    assert len(cache) == 2 and cache.get("b") is None and cache.get("a") is not None

    small = len(_model(4).SerializeToString())
    by_bytes = ModelCache(10, max_bytes=2 * small + small // 2)
    for key in ("a", "b", "c"):
        by_bytes.put(key, _model(4, key))
    assert len(by_bytes) == 2 and by_bytes.get("a") is None and by_bytes.nbytes <= by_bytes.max_bytes
    assert not by_bytes.put("big", _model(4096)) and by_bytes.get("big") is None  # over max_bytes: not kept
    assert by_bytes.get("b") is not None and by_bytes.get("c") is not None  # ... and evicts nothing


def test_a_key_put_again_replaces_its_entry_and_counts_its_bytes_once():
    cache = ModelCache(4)
    cache.put("a", _model(4))
    cache.put("a", _model(64), value="wide")
    copy, value = cache.get("a")
    assert value == "wide" and len(cache) == 1 and cache.nbytes == len(_model(64).SerializeToString())
    assert copy.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 64
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0 and cache.get("a") is None
    assert not ModelCache(0).put("a", _model(4))
    with pytest.raises(ValueError):
        ModelCache(-1)


def test_get_or_build_builds_once_per_key_and_never_without_one():
    cache, built = ModelCache(4), []

    def build():
        built.append(1)
        return _model(4), "note"

    first, value = cache.get_or_build("a", build)
    again, value_again = cache.get_or_build("a", build)
    assert len(built) == 1 and value == value_again == "note" and again is not first
    assert again.SerializeToString() == first.SerializeToString()
    cache.get_or_build(None, build)
    cache.get_or_build(None, build)
    assert len(built) == 3 and len(cache) == 1  # no key (e.g. an unreadable file's stamp): built, not kept
