"""Write small ONNX graphs by hand: one call per node, constants as initializers, unique names.

:class:`GraphBuilder` is a thin layer over ``onnx.helper`` for post-processing and glue graphs
(decoding, thresholds, ``NonMaxSuppression``): ``b.op("Mul", [x, b.const(2.0)])`` returns the name
of the new tensor; every node, tensor and constant gets a name under the builder's ``prefix`` unless
an output name is given. :meth:`GraphBuilder.model` wraps the nodes into a model at an opset.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graph_tools.errors import GraphError


class GraphBuilder:
    """Collects nodes and initializers; see the module docstring."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, value, dtype=None, hint: str = "const") -> str:
        """An initializer holding ``np.asarray(value, dtype)`` (float32 for Python floats); its name."""
        array = np.asarray(value, dtype=dtype)
        if dtype is None and array.dtype == np.float64:
            array = array.astype(np.float32)
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **attrs) -> str | list[str]:
        """Add a node; its output name (a list for several outputs). ``outputs``: a count or the names."""
        names = [self._name(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=self._name(op_type), **attrs))
        return names[0] if len(names) == 1 else names

    def model(self, inputs: Sequence[onnx.ValueInfoProto], outputs: Sequence[onnx.ValueInfoProto], opset: int,
              ir_version: int, name: str = "graph") -> onnx.ModelProto:
        """The nodes as a model importing ``ai.onnx`` ``opset``; checked with ``onnx.checker``."""
        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs), self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
        try:
            onnx.checker.check_model(model, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise GraphError(f"built graph {name!r} is invalid: {str(exc).splitlines()[0]}") from exc
        return model


def value_info(name: str, elem_type: int, shape: Sequence[int | str | None]) -> onnx.ValueInfoProto:
    """``helper.make_tensor_value_info`` (``elem_type`` an ``onnx.TensorProto`` type)."""
    return helper.make_tensor_value_info(name, elem_type, list(shape))
