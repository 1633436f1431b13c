"""Reconciling opset and IR versions before two models are merged.

Two graphs can only be merged when they import the same version of the default domain
(``ai.onnx``); the lower one is converted up with ``onnx.version_converter`` (a model can also be
converted down where the converter has adapters). The IR version of the result must be at least
what its opsets require (``onnx.helper.find_min_ir_version_for``) and at most what the installed
onnxruntime loads (:func:`ort_max_ir_version`, probed once).
"""

from __future__ import annotations

import functools

import onnx
from onnx import helper

from graph_tools.errors import GraphError
from graph_tools.inspect import opset_version
from graph_tools.log import get_logger
from graph_tools.session import create_session

LOG = get_logger(__name__)

_PROBE_IR_RANGE: tuple[int, int] = (3, 32)
MIN_PROBE_OPSET: int = 7


def _identity_model(ir_version: int | None = None, opset: int = 13) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = ir_version if ir_version is not None else helper.find_min_ir_version_for(opsets, True)
    return model


def _ort_loads(model: onnx.ModelProto) -> bool:
    try:
        create_session(model)
    except GraphError:  # onnxruntime refuses the IR or opset version
        return False
    return True


@functools.lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """Highest model IR version the installed onnxruntime loads (probed with a one-node model)."""
    best = 0
    for ir in range(*_PROBE_IR_RANGE):
        if not _ort_loads(_identity_model(ir)):
            break
        best = ir
    return best


@functools.lru_cache(maxsize=1)
def max_supported_opset() -> int:
    """Highest ``ai.onnx`` opset both the installed onnx (converter, checker) and onnxruntime handle."""
    best = 0
    for opset in range(MIN_PROBE_OPSET, onnx.defs.onnx_opset_version() + 1):
        if not _ort_loads(_identity_model(None, opset)):
            break
        best = opset
    return best


def validate_opset(opset: int, minimum: int | None = None, why: str = "") -> None:
    """GraphError when ``opset`` is below ``minimum`` (``why`` says what needs it) or above
    :func:`max_supported_opset`."""
    if minimum is not None and opset < minimum:
        raise GraphError(f"opset {opset} is too low: {why or 'this model'} needs opset >= {minimum}")
    top = max_supported_opset()
    if opset > top:
        raise GraphError(f"opset {opset} is not supported here: the installed onnx/onnxruntime handle up to opset {top}")


def min_ir_version(model: onnx.ModelProto) -> int:
    """Lowest IR version that the model's opset imports require (unknown domains ignored)."""
    return int(helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))


def choose_ir_version(*models: onnx.ModelProto) -> int:
    """IR version for a model merged from ``models``.

    The highest IR version among the parts, capped at what onnxruntime loads, but never below what
    the opset imports require. Raises :class:`GraphError` when the opsets need a newer IR than the
    installed onnxruntime supports.
    """
    need = max(min_ir_version(m) for m in models)
    have = max(int(m.ir_version) for m in models)
    cap = ort_max_ir_version()
    if need > cap:
        raise GraphError(
            f"the merged opsets need IR version {need} but the installed onnxruntime loads at most {cap}; "
            "choose a lower opset"
        )
    return max(need, min(have, cap))


def default_opset(model: onnx.ModelProto) -> int:
    """``ai.onnx`` opset of ``model``."""
    return opset_version(model, "")


def convert_opset(model: onnx.ModelProto, target: int, what: str = "model") -> onnx.ModelProto:
    """``model`` with its ``ai.onnx`` opset converted to ``target`` (returned as is when equal).

    ``what`` names the model in messages (a file path, ``"head"``). Raises :class:`GraphError`
    naming it, the two versions and the converter's reason when the conversion is impossible.
    Opset imports of other domains are kept. The IR version is raised to what ``target`` requires.
    """
    current = default_opset(model)
    if current == target:
        return model
    validate_opset(target)
    LOG.info("converting %s from opset %d to %d (onnx.version_converter)", what, current, target)
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises RuntimeError/ValueError/ConvertError subclasses
        reason = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise GraphError(f"cannot convert {what} from opset {current} to {target}: {reason}") from exc
    converted.ir_version = max(int(converted.ir_version), min_ir_version(converted))
    return converted


def dedupe_opset_imports(model: onnx.ModelProto) -> onnx.ModelProto:
    """Keep one opset import per domain (``"ai.onnx"`` counted as ``""``; the highest version), in place.

    Merging models can list a domain twice (``[("", 17), ("", 17)]``), which some consumers refuse
    (onnxruntime's quantization tools: "Failed to find proper ai.onnx domain"). Returns ``model``.
    """
    best: dict[str, int] = {}
    for imp in model.opset_import:
        domain = "" if imp.domain == "ai.onnx" else imp.domain
        best[domain] = max(best.get(domain, 0), int(imp.version))
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in best.items())
    return model

