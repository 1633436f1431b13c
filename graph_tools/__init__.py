"""graph_tools: generic ONNX surgery on top of onnx, onnx-graphsurgeon, onnxslim, onnxsim and onnxruntime.

Load and save (atomic, external data past 2 GB), inspect (shapes, nearest tensors, graph inputs),
trim a model at tensors, make a batch dimension dynamic, convert opsets and reconcile IR versions,
float16 compute with a block list,
splice two models (and feed an input from inside the model: ``loop_back``), hand-written graphs
(``GraphBuilder``), common subexpression elimination (``merge_duplicate_nodes``), simplify with verification, a per-process model cache
(``ModelCache``), one onnxruntime session factory, and streaming
error statistics for parity checks. It knows nothing of the application that uses it: tensor
names are parameters, errors are :class:`GraphError`, logs go to the ``graph_tools`` logger.

Names are imported on first use (PEP 562): ``import graph_tools`` costs nothing, and running a model
loads only what it needs (no onnx-graphsurgeon, onnx.compose or the simplifiers).
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE: dict[str, str] = {
    **dict.fromkeys(('batch_consistent', 'make_batch_dynamic'), "batch"),
    **dict.fromkeys(('GraphBuilder', 'value_info'), "build"),
    **dict.fromkeys(('ModelCache',), "cache"),
    **dict.fromkeys(('DedupeReport', 'merge_duplicate_nodes'), "dedupe"),
    **dict.fromkeys(('GraphError',), "errors"),
    **dict.fromkeys(('Float16Report', 'convert_float16'), "float16"),
    **dict.fromkeys(('Dim', 'describe_io', 'dims', 'elem_type_of', 'first_nodes_downstream', 'graph_inputs', 'infer_shapes', 'nearest_tensors', 'node_attributes', 'nodes_of_type', 'opset_version', 'require_tensor', 'tensor_shapes', 'upstream_tensors'), "inspect"),
    **dict.fromkeys(('atomic_path', 'clean_stale_temp_dirs', 'clean_stale_temps', 'file_sha256', 'load_model',
                     'needs_external_data', 'save_model', 'temp_dir'), "io"),
    **dict.fromkeys(('read_file_props', 'read_props', 'set_prop', 'write_props'), "metadata"),
    **dict.fromkeys(('choose_ir_version', 'convert_opset', 'dedupe_opset_imports', 'default_opset', 'max_supported_opset', 'ort_max_ir_version', 'validate_opset'), "opset"),
    **dict.fromkeys(('cuda_device_count', 'cuda_unusable_reason', 'execution_providers', 'parse_device', 'provider_names'), "providers"),
    **dict.fromkeys(('CPU_PROVIDER', 'Feeds', 'OpenVinoSession', 'ProviderSpec', 'create_openvino_session', 'create_session', 'run_feeds'), "session"),
    **dict.fromkeys(('SIMPLIFIERS', 'SimplifyResult', 'max_output_difference', 'simplify_verified'), "simplify"),
    **dict.fromkeys(('feed_input', 'loop_back', 'rename_tensors', 'splice', 'tensor_names', 'toposort'), "splicing"),
    **dict.fromkeys(('ErrorStats', 'class_map'), "stats"),
    **dict.fromkeys(('copy_model_fields', 'trim_at_tensor'), "trim"),
}
"""The submodule that defines each public name."""

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'graph_tools' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"graph_tools.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
