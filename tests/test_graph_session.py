"""graph_tools sessions (onnxruntime, OpenVINO): the thread count from GRAPH_TOOLS_ORT_THREADS (processes sharing cores)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto

import graph_tools as gt
from graph_tools.build import GraphBuilder, value_info
from graph_tools.errors import GraphError
from graph_tools.session import THREADS_ENV


def _model():
    b = GraphBuilder("s/")
    b.op("Mul", ["x", b.const([2.0, 3.0])], outputs=["y"])
    return b.model([value_info("x", TensorProto.FLOAT, [2])], [value_info("y", TensorProto.FLOAT, [2])], 17, 8)


def test_sessions_take_their_thread_count_from_the_environment(monkeypatch):
    model = _model()
    monkeypatch.setenv(THREADS_ENV, "3")
    session = gt.create_session(model)
    assert session.get_session_options().intra_op_num_threads == 3
    np.testing.assert_array_equal(session.run(None, {"x": np.float32([1, 2])})[0], [2.0, 6.0])
    monkeypatch.delenv(THREADS_ENV)
    assert gt.create_session(model).get_session_options().intra_op_num_threads == 0  # onnxruntime's default
    for bad in ("two", "\u00b2", "-1"):  # "²" passes str.isdigit() but not int()
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(GraphError, match=THREADS_ENV):
            gt.create_session(model)


def test_openvino_sessions_take_their_thread_count_from_the_environment(monkeypatch):
    import openvino  # noqa: F401  (a default dependency group: uv sync installs it)

    model = _model()
    monkeypatch.setenv(THREADS_ENV, "1")
    session = gt.create_openvino_session(model)
    assert int(session.compiled.get_property("INFERENCE_NUM_THREADS")) == 1
    np.testing.assert_array_equal(session.run(None, {"x": np.float32([1, 2])})[0], [2.0, 6.0])
    monkeypatch.delenv(THREADS_ENV)
    assert "INFERENCE_NUM_THREADS" not in gt.create_openvino_session(model).config
