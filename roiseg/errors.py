"""User-facing errors.

Library code raises :class:`RoisegError` (or a subclass) for anything the user can fix: a missing
file, a malformed field, a tensor that does not exist. The CLI prints ``error: <message>`` on one
line and exits with status 2 (1 is reserved for "ran, but a check failed", e.g. parity); the
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

from graph_tools import GraphError

F = TypeVar("F", bound=Callable)


class RoisegError(Exception):
    """An error caused by user input; its message names the file or field at fault."""

    exit_code: int = 2


class InputError(RoisegError):
    """Bad or missing input file, folder or field."""


class CheckFailed(RoisegError):
    """The command ran, but what it checked did not hold (e.g. parity outside tolerance)."""

    exit_code = 1


@contextlib.contextmanager
def graph_errors() -> Iterator[None]:
    """roiseg's boundary with graph_tools: a :class:`graph_tools.GraphError` becomes an :class:`InputError`."""
    try:
        yield
    except GraphError as exc:
        raise InputError(str(exc)) from exc


def translate_graph_errors(func: F) -> F:
    """Decorator form of :func:`graph_errors` for roiseg's entry points that call graph_tools."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with graph_errors():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
