"""graph_tools: generic ONNX surgery on top of onnx, onnx-graphsurgeon, onnxslim, onnxsim and onnxruntime.

Load and save (atomic, external data past 2 GB), inspect (shapes, nearest tensors, graph inputs),
trim a model at tensors, make a batch dimension dynamic, convert opsets and reconcile IR versions,
float16 compute with a block list,
splice two models (and feed an input from inside the model: ``loop_back``), hand-written graphs
(``GraphBuilder``), common subexpression elimination (``merge_duplicate_nodes``), simplify with verification, one onnxruntime session factory, and streaming
error statistics for parity checks. It knows nothing of the application that uses it: tensor
names are parameters, errors are :class:`GraphError`, logs go to the ``graph_tools`` logger.
"""

from graph_tools.batch import batch_consistent, make_batch_dynamic
from graph_tools.build import GraphBuilder, value_info
from graph_tools.dedupe import DedupeReport, merge_duplicate_nodes
from graph_tools.errors import GraphError
from graph_tools.float16 import Float16Report, convert_float16
from graph_tools.inspect import (
    Dim, describe_io, dims, elem_type_of, graph_inputs, infer_shapes, nearest_tensors, node_attributes,
    nodes_of_type, opset_version, require_tensor, tensor_shapes, upstream_tensors,
)
from graph_tools.io import atomic_path, clean_stale_temps, file_sha256, load_model, needs_external_data, save_model
from graph_tools.metadata import read_props, set_prop, write_props
from graph_tools.opset import (
    choose_ir_version, convert_opset, default_opset, max_supported_opset, ort_max_ir_version, validate_opset,
)
from graph_tools.providers import (
    cuda_device_count, cuda_unusable_reason, execution_providers, parse_device, provider_names,
)
from graph_tools.session import (
    CPU_PROVIDER, Feeds, OpenVinoSession, ProviderSpec, create_openvino_session, create_session, run_feeds,
)
from graph_tools.simplify import SIMPLIFIERS, SimplifyResult, max_output_difference, simplify_verified
from graph_tools.splice import feed_input, loop_back, rename_tensors, splice, tensor_names, toposort
from graph_tools.stats import ErrorStats, class_map
from graph_tools.trim import copy_model_fields, trim_at_tensor

__all__ = [
    "CPU_PROVIDER", "cuda_device_count", "cuda_unusable_reason", "execution_providers", "parse_device",
    "provider_names", "DedupeReport", "Dim", "GraphBuilder", "ErrorStats", "Feeds", "Float16Report", "GraphError", "OpenVinoSession", "ProviderSpec", "SIMPLIFIERS", "SimplifyResult", "atomic_path",
    "clean_stale_temps",
    "batch_consistent", "choose_ir_version", "class_map", "convert_float16", "create_openvino_session", "convert_opset", "copy_model_fields",
    "create_session", "default_opset", "describe_io", "dims", "elem_type_of", "feed_input", "file_sha256", "graph_inputs",
    "infer_shapes", "load_model", "loop_back", "merge_duplicate_nodes", "make_batch_dynamic", "max_output_difference", "max_supported_opset",
    "nearest_tensors", "needs_external_data", "node_attributes", "nodes_of_type", "opset_version",
    "ort_max_ir_version", "read_props", "rename_tensors", "require_tensor", "run_feeds", "save_model", "set_prop",
    "simplify_verified", "splice", "tensor_names", "tensor_shapes", "toposort", "trim_at_tensor", "upstream_tensors", "validate_opset",
    "value_info", "write_props",
]
