"""Simplify a model with onnxslim (or onnxsim), and keep the result only if it provably computes the same thing.

The simplifiers are tried in order (:data:`SIMPLIFIERS`: onnxslim, which usually leaves fewer
nodes, then onnxsim); the first whose result verifies is kept. onnxsim's own check feeds uniform random inputs, which for a ROI head means degenerate boxes
(x2 < x1). Instead the caller passes real feeds (a real or realistic image and real boxes, with one
and with several ROIs so the dynamic ROI axis is exercised); both models run in onnxruntime on CPU
and the simplified one is kept only when every output matches within ``atol``. On any failure the
unsimplified model is kept and a warning says why.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import onnx

from graph_tools.cache import ModelCache
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
    (``None`` when simplification failed before the comparison), ``note`` says what happened,
    ``tool`` which simplifier's result was kept (``""`` when none).
    """

    model: onnx.ModelProto
    simplified: bool
    nodes_before: int
    nodes_after: int | None
    max_abs_err: float | None
    note: str
    tool: str = ""


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


def run_onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    """``onnxslim.slim`` (constant folding, dead code, fusions) without its own check; raises on failure."""
    import onnxslim

    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # onnxslim may change the model it is given
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        slimmed = onnxslim.slim(copy)
    if slimmed is None:
        raise RuntimeError("onnxslim returned no model")
    return slimmed


SIMPLIFIERS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {"onnxslim": run_onnxslim, "onnxsim": run_onnxsim}
"""Simplifiers tried in this order by :func:`simplify_verified`."""


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:200]}" if text else type(exc).__name__


def _try_simplifier(name: str, run, model: onnx.ModelProto, feeds: Sequence[Feeds], reference, atol: float,
                    before: int) -> SimplifyResult:
    """One simplifier's verified result (``simplified`` False with the reason when it does not verify)."""
    try:
        simplified = run(model)
        onnx.checker.check_model(simplified)
    except Exception as exc:  # onnxsim/onnxslim/onnx raise many types (RuntimeError, ValidationError, ...)
        return SimplifyResult(model, False, before, None, None, f"{name} failed: {_first_line(exc)}")
    after = len(simplified.graph.node)
    try:
        err = max_output_difference(reference, run_feeds(create_session(simplified), feeds))
    except Exception as exc:  # onnxruntime errors (e.g. a shape frozen by the simplifier)
        return SimplifyResult(model, False, before, after, None,
                              f"{name}'s model does not run on the check inputs: {str(exc).splitlines()[0][:200]}")
    if not err <= atol:
        return SimplifyResult(model, False, before, after, err, f"{name}'s model differs by {err:.3g} (> {atol:g}) "
                              "on the check inputs")
    note = f"{name}: {before} -> {after} nodes, max abs difference {err:.2e} on {len(feeds)} check input(s)"
    return SimplifyResult(simplified, True, before, after, err, note, name)


SIMPLIFY_CACHE_SIZE: int = 4
"""Results kept per process (the model serialized), by the model's and the feeds' bytes, ``atol`` and the
simplifier functions: exporting one model several ways in one process (float32, float16, int8)
simplifies and verifies it once."""
_RESULTS = ModelCache(SIMPLIFY_CACHE_SIZE)


def _cache_key(model: onnx.ModelProto, feeds: Sequence[Feeds], atol: float, simplifiers: Sequence[str]) -> tuple:
    digest = hashlib.sha256(model.SerializeToString())
    for feed in feeds:
        for name in sorted(feed):
            value = np.ascontiguousarray(feed[name])
            digest.update(f"{name}|{value.dtype}|{value.shape}|".encode())
            digest.update(value.tobytes())
    return digest.hexdigest(), float(atol), tuple((name, SIMPLIFIERS[name]) for name in simplifiers)


def simplify_verified(model: onnx.ModelProto, feeds: Sequence[Feeds], atol: float = SIMPLIFY_ATOL,
                      simplifiers: Sequence[str] = tuple(SIMPLIFIERS)) -> SimplifyResult:
    """Simplify ``model`` and verify it on ``feeds`` (each a ``{input name: array}`` dict).

    Each of ``simplifiers`` (names of :data:`SIMPLIFIERS`, in order) is tried until one's result
    passes ``onnx.checker`` and matches the unsimplified model within ``atol`` on every output of
    every feed; that result is returned. When none does, the unsimplified model, with a warning
    logged and every reason in :attr:`SimplifyResult.note`. The same model, feeds and simplifiers
    again in this process: the earlier result, as the caller's own copy (:data:`SIMPLIFY_CACHE_SIZE`).
    """
    if not feeds:
        raise ValueError("simplify_verified needs at least one feed to verify the result on")
    unknown = [s for s in simplifiers if s not in SIMPLIFIERS]
    if unknown:
        raise ValueError(f"unknown simplifier {unknown[0]!r}; expected one of {', '.join(SIMPLIFIERS)}")
    if needs_external_data(model):
        note = "the model is over 2 GB; the simplifiers work on in-memory protobufs only"
        LOG.warning("keeping the unsimplified model: %s", note)
        return SimplifyResult(model, False, len(model.graph.node), None, None, note)
    key = _cache_key(model, feeds, atol, simplifiers)
    kept = _RESULTS.get(key)
    if kept is not None:
        copy, result = kept
        if result.simplified:
            LOG.info("%s (the same model simplified and verified earlier in this process)", result.note)
        else:
            LOG.warning("keeping the unsimplified model: %s (found earlier in this process)", result.note)
        return replace(result, model=copy)
    result = _simplify_and_verify(model, feeds, atol, simplifiers)
    _RESULTS.put(key, result.model, replace(result, model=onnx.ModelProto()))
    return result


def _simplify_and_verify(model: onnx.ModelProto, feeds: Sequence[Feeds], atol: float,
                         simplifiers: Sequence[str]) -> SimplifyResult:
    """:func:`simplify_verified` without the cache."""
    before = len(model.graph.node)
    reference = run_feeds(create_session(model), feeds)
    failed: list[SimplifyResult] = []
    for name in simplifiers:
        result = _try_simplifier(name, SIMPLIFIERS[name], model, feeds, reference, atol, before)
        if result.simplified:
            if failed:
                result.note += f" ({'; '.join(f.note for f in failed)})"
            LOG.info(result.note)
            return result
        LOG.info("%s", result.note)
        failed.append(result)
    note = "; ".join(f.note for f in failed)
    LOG.warning("keeping the unsimplified model: %s", note)
    last = failed[-1]
    return SimplifyResult(model, False, before, last.nodes_after, last.max_abs_err, note)
