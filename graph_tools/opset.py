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

from graph_tools.inspect import opset_version
from roiseg.errors import InputError
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

DEFAULT_DOMAINS: tuple[str, ...] = ("", "ai.onnx")
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
    import onnxruntime as ort

    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own exception types for unsupported versions
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


def check_opset_supported(opset: int) -> None:
    """InputError when ``opset`` is newer than :func:`max_supported_opset`."""
    top = max_supported_opset()
    if opset > top:
        raise InputError(f"opset {opset} is not supported here: the installed onnx/onnxruntime handle up to opset {top}")


def min_ir_version(model: onnx.ModelProto) -> int:
    """Lowest IR version that the model's opset imports require (unknown domains ignored)."""
    return int(helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True))


def choose_ir_version(*models: onnx.ModelProto) -> int:
    """IR version for a model merged from ``models``.

    The highest IR version among the parts, capped at what onnxruntime loads, but never below what
    the opset imports require. Raises :class:`InputError` when the opsets need a newer IR than the
    installed onnxruntime supports.
    """
    need = max(min_ir_version(m) for m in models)
    have = max(int(m.ir_version) for m in models)
    cap = ort_max_ir_version()
    if need > cap:
        raise InputError(
            f"the merged opsets need IR version {need} but the installed onnxruntime loads at most {cap}; "
            "choose a lower --opset"
        )
    return max(need, min(have, cap))


def default_opset(model: onnx.ModelProto) -> int:
    """``ai.onnx`` opset of ``model``."""
    return opset_version(model, "")


def convert_opset(model: onnx.ModelProto, target: int, what: str = "model") -> onnx.ModelProto:
    """``model`` with its ``ai.onnx`` opset converted to ``target`` (returned as is when equal).

    ``what`` names the model in messages (a file path, ``"head"``). Raises :class:`InputError`
    naming it, the two versions and the converter's reason when the conversion is impossible.
    Opset imports of other domains are kept. The IR version is raised to what ``target`` requires.
    """
    current = default_opset(model)
    if current == target:
        return model
    check_opset_supported(target)
    LOG.info("converting %s from opset %d to %d (onnx.version_converter)", what, current, target)
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises RuntimeError/ValueError/ConvertError subclasses
        reason = str(exc).strip().splitlines()[0][:240] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot convert {what} from opset {current} to {target}: {reason}") from exc
    converted.ir_version = max(int(converted.ir_version), min_ir_version(converted))
    return converted


def reconcile_opsets(
    first: onnx.ModelProto, second: onnx.ModelProto, target: int | None = None,
    names: tuple[str, str] = ("first model", "second model"),
) -> tuple[onnx.ModelProto, onnx.ModelProto, int]:
    """Bring both models to one ``ai.onnx`` opset: ``target``, or the higher of the two.

    Other domains must agree where both import them (``InputError`` otherwise). Returns the two
    (possibly converted) models and the opset used.
    """
    a, b = default_opset(first), default_opset(second)
    target = max(a, b) if target is None else int(target)
    first = convert_opset(first, target, names[0])
    second = convert_opset(second, target, names[1])
    dom_a = {i.domain: i.version for i in first.opset_import if i.domain not in DEFAULT_DOMAINS}
    dom_b = {i.domain: i.version for i in second.opset_import if i.domain not in DEFAULT_DOMAINS}
    for dom in dom_a.keys() & dom_b.keys():
        if dom_a[dom] != dom_b[dom]:
            raise InputError(
                f"{names[0]} imports {dom} version {dom_a[dom]} but {names[1]} imports version {dom_b[dom]}; "
                "they cannot be merged"
            )
    return first, second, target
