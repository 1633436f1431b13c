"""The one onnxruntime session factory every caller uses, and running feeds through a session.

Providers are the caller's choice (a list as ``onnxruntime.InferenceSession`` takes it); the
default is the CPU provider. In-memory models over protobuf's 2 GB limit are written to a
temporary folder with external data first; the folder lives as long as the session.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence, Union

import numpy as np
import onnxruntime as ort

from graph_tools.errors import GraphError

if TYPE_CHECKING:
    import onnx

CPU_PROVIDER: str = "CPUExecutionProvider"
ProviderSpec = Union[str, tuple[str, dict]]
Feeds = Mapping[str, np.ndarray]
DEFAULT_LOG_SEVERITY: int = 3
"""onnxruntime log level of sessions: 3 = errors only (its warnings about unused initializers are noise)."""
THREADS_ENV: str = "GRAPH_TOOLS_ORT_THREADS"
"""Environment variable: intra-op threads of every session :func:`create_session` makes, and of
:func:`create_openvino_session`'s on the CPU (unset or 0: the engine's default, one per core). Set it where several processes share the cores (test workers,
parallel jobs): each default pool spins on every core, and the processes then slow each other down. Not
applied to ``options`` a caller passes, nor to OpenVINO devices other than ``"CPU"``."""


def intra_op_threads() -> int:
    """The intra-op thread count :data:`THREADS_ENV` asks for (0: onnxruntime's default); GraphError when it
    is not a non-negative integer."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return 0
    if not value.isdecimal() or not value.isascii():
        raise GraphError(f"{THREADS_ENV}={value!r}: expected a non-negative integer (threads per session)")
    return int(value)


def create_session(
    model: onnx.ModelProto | str | Path,
    providers: Sequence[ProviderSpec] | None = None,
    options: ort.SessionOptions | None = None,
    what: str | None = None,
    arena: bool = True,
) -> ort.InferenceSession:
    """An onnxruntime session on an in-memory model or a file.

    ``providers`` default to CPU only. ``what`` names the model in the :class:`GraphError` raised
    when onnxruntime cannot load it (default: the path, or "model"). ``arena=False`` turns off the
    CPU memory arena, so a run's buffers are freed after it (lower peak when runs of very different
    sizes alternate, e.g. checks; a little slower). Default ``options`` take their intra-op thread
    count from :data:`THREADS_ENV`.
    """
    if options is None:
        options = ort.SessionOptions()
        options.log_severity_level = DEFAULT_LOG_SEVERITY
        options.enable_cpu_mem_arena = arena
        options.intra_op_num_threads = intra_op_threads()
    tmp = None
    in_memory = not isinstance(model, (str, Path))
    if in_memory:  # a ModelProto (a file path needs no onnx here: running a model does not import it)
        from graph_tools.io import needs_external_data, save_model

        if needs_external_data(model):
            tmp = tempfile.TemporaryDirectory(prefix="graph_tools_session_")
            source: bytes | str = str(save_model(model, Path(tmp.name) / "model.onnx", external=True))
        else:
            source = model.SerializeToString()
    else:
        source = str(model)
    try:
        session = ort.InferenceSession(source, sess_options=options, providers=list(providers or [CPU_PROVIDER]))
    except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, NotImplemented, ...)
        name = what or ("model" if in_memory else str(model))
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise GraphError(f"onnxruntime cannot load {name}: {reason}") from exc
    session._graph_tools_tmpdir = tmp  # keep the external-data folder alive with the session
    return session


def run_feeds(session: ort.InferenceSession, feeds: Sequence[Feeds]) -> list[list[np.ndarray]]:
    """All outputs of ``session`` for each feed (a ``{input name: array}`` dict)."""
    return [session.run(None, dict(f)) for f in feeds]


@dataclass(frozen=True)
class TensorArg:
    """A model input or output as onnxruntime's ``NodeArg`` shows it: its name and shape (``None`` for a
    dynamic dimension, where onnxruntime shows the ``dim_param`` name)."""

    name: str
    shape: list[int | None]


def _port_names(ports, onnx_names: Sequence[str]) -> list[str]:
    """The ONNX name of each OpenVINO port: the one of its names that the ONNX graph uses (OpenVINO may
    merge a graph output with the tensor feeding it, e.g. through an ``Identity``, and then
    ``get_any_name()`` can be the inner name), else the ONNX name at the same position."""
    wanted, names = set(onnx_names), []
    for i, port in enumerate(ports):
        known = sorted(set(port.get_names()) & wanted)
        names.append(known[0] if known else (onnx_names[i] if i < len(onnx_names) else port.get_any_name()))
    return names


class OpenVinoSession:
    """An OpenVINO compiled model with onnxruntime's ``run(output_names, feeds)``, ``get_inputs()`` and
    ``get_outputs()`` interface, under the ONNX graph's input and output names."""

    def __init__(self, compiled, config: dict[str, str], inputs: Sequence[str] = (), outputs: Sequence[str] = ()) -> None:
        self.compiled = compiled
        self.config = dict(config)
        self.input_names = _port_names(compiled.inputs, list(inputs))
        self.output_names = _port_names(compiled.outputs, list(outputs))

    def _args(self, ports, names: list[str]) -> list[TensorArg]:
        return [TensorArg(name, [d.get_length() if d.is_static else None for d in p.get_partial_shape()])
                for name, p in zip(names, ports)]

    def get_inputs(self) -> list[TensorArg]:
        return self._args(self.compiled.inputs, self.input_names)

    def get_outputs(self) -> list[TensorArg]:
        return self._args(self.compiled.outputs, self.output_names)

    def run(self, output_names: Sequence[str] | None, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        ports = dict(zip(self.input_names, self.compiled.inputs))
        result = self.compiled({ports.get(name, name): value for name, value in feeds.items()})
        by_name = {name: np.asarray(result[o]) for name, o in zip(self.output_names, self.compiled.outputs)}
        return [by_name[name] for name in (output_names or self.output_names)]


def create_openvino_session(model: onnx.ModelProto | str | Path, device: str = "CPU",
                            precision: str | None = "f32") -> OpenVinoSession:
    """An OpenVINO session on an ONNX model (optional dependency ``openvino``).

    ``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT``: ``f32`` by default, because OpenVINO
    otherwise picks bf16 on CPUs with bf16 support (AMX, AVX512_BF16) and f16 on GPUs, which moves
    results far more than float32 rounding; ``None`` leaves OpenVINO's choice. On the CPU its thread
    count comes from :data:`THREADS_ENV` (``INFERENCE_NUM_THREADS``).
    """
    try:
        import openvino as ov
    except ImportError as exc:
        raise GraphError("OpenVINO is not installed (it is an optional dependency: the 'openvino' "
                         "dependency group)") from exc
    config = {"INFERENCE_PRECISION_HINT": precision} if precision else {}
    threads = intra_op_threads()
    if threads and device == "CPU":
        config["INFERENCE_NUM_THREADS"] = str(threads)
    import onnx

    from graph_tools.io import needs_external_data, save_model

    with tempfile.TemporaryDirectory(prefix="graph_tools_ov_") as tmp:
        try:
            if isinstance(model, onnx.ModelProto):
                path = save_model(model, Path(tmp) / "model.onnx", external=needs_external_data(model))
            else:
                path = Path(model)
            core = ov.Core()
            compiled = core.compile_model(core.read_model(str(path)), device, config)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise GraphError(f"OpenVINO cannot load {model if not isinstance(model, onnx.ModelProto) else 'model'}: "
                             f"{reason}") from exc
    graph = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)
    initializers = {t.name for t in graph.graph.initializer}
    inputs = [i.name for i in graph.graph.input if i.name not in initializers]
    return OpenVinoSession(compiled, config, inputs, [o.name for o in graph.graph.output])
