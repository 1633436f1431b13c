"""The one error type of graph_tools: a model, tensor or version that the operation cannot use.

Callers that face users (roiseg) translate it into their own error type at their boundary.
"""

from __future__ import annotations


class GraphError(Exception):
    """A graph operation cannot be done on the given model; the message names the model or tensor."""
