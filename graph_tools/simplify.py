"""Simplify a model with onnxsim, and keep the result only if it provably computes the same thing.

onnxsim's own check feeds uniform random inputs, which for a ROI head means degenerate boxes
(x2 < x1). Instead the caller passes real feeds (a real or realistic image and real boxes, with one
and with several ROIs so the dynamic ROI axis is exercised); both models run in onnxruntime on CPU
and the simplified one is kept only when every output matches within ``atol``. On any failure the
unsimplified model is kept and a warning says why.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import onnx

from graph_tools.io import needs_external_data
from graph_tools.log import get_logger
from graph_tools.session import Feeds, create_session, run_feeds

LOG = get_logger(__name__)

SIMPLIFY_ATOL: float = 1e-5
"""Largest absolute difference tolerated between the simplified and the unsimplified outputs."""


@dataclass
class SimplifyResult:
    """Outcome of :func:`simplify_verified`.

    ``model`` is the model to keep (simplified when ``simplified``), ``nodes_before``/``nodes_after``
    count main-graph nodes, ``max_abs_err`` is the largest output difference seen on the feeds
    (``None`` when simplification failed before the comparison), ``note`` says what happened.
    """

    model: onnx.ModelProto
    simplified: bool
    nodes_before: int
    nodes_after: int | None
    max_abs_err: float | None
    note: str


def max_output_difference(a: Sequence[Sequence[np.ndarray]], b: Sequence[Sequence[np.ndarray]]) -> float:
    """Largest ``|a - b|`` over all feeds and outputs; ``inf`` when shapes differ or values are not finite."""
    worst = 0.0
    for outs_a, outs_b in zip(a, b, strict=True):
        for x, y in zip(outs_a, outs_b, strict=True):
            if x.shape != y.shape:
                return float("inf")
            if x.size:
                d = np.abs(x.astype(np.float64) - y.astype(np.float64))
                if not np.isfinite(d).all():
                    return float("inf")
                worst = max(worst, float(d.max()))
    return worst


def run_onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnxsim.simplify`` without its random-input check (see :func:`simplify_verified`); raises on failure."""
    import onnxsim

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        simplified, _ = onnxsim.simplify(model, check_n=0)
    return simplified


def simplify_verified(model: onnx.ModelProto, feeds: Sequence[Feeds], atol: float = SIMPLIFY_ATOL) -> SimplifyResult:
    """Simplify ``model`` and verify it on ``feeds`` (each a ``{input name: array}`` dict).

    Returns the simplified model when onnxsim succeeds, the result passes ``onnx.checker`` and all
    outputs match the unsimplified model within ``atol`` on every feed; otherwise the unsimplified
    model, with a warning logged and the reason in :attr:`SimplifyResult.note`.
    """
    before = len(model.graph.node)
    if not feeds:
        raise ValueError("simplify_verified needs at least one feed to verify the result on")

    def _keep(note: str, after: int | None = None, err: float | None = None) -> SimplifyResult:
        LOG.warning("keeping the unsimplified model: %s", note)
        return SimplifyResult(model, False, before, after, err, note)

    if needs_external_data(model):
        return _keep("the model is over 2 GB; onnxsim works on in-memory protobufs only")
    try:
        simplified = run_onnxsim(model)
        onnx.checker.check_model(simplified)
    except Exception as exc:  # onnxsim/onnx raise many types (RuntimeError, ValidationError, ...)
        return _keep(f"onnxsim failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}")
    after = len(simplified.graph.node)
    try:
        err = max_output_difference(run_feeds(create_session(model), feeds), run_feeds(create_session(simplified), feeds))
    except Exception as exc:  # onnxruntime errors (e.g. a shape frozen by the simplifier)
        return _keep(f"the simplified model does not run on the check inputs: {str(exc).splitlines()[0][:200]}", after)
    if not err <= atol:
        return _keep(f"the simplified model differs by {err:.3g} (> {atol:g}) on the check inputs", after, err)
    note = f"onnxsim: {before} -> {after} nodes, max abs difference {err:.2e} on {len(feeds)} check input(s)"
    LOG.info(note)
    return SimplifyResult(simplified, True, before, after, err, note)
