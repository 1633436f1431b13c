"""Logging set-up and progress bars (tqdm: rate and ETA) used by every long-running command."""

from __future__ import annotations

import logging
import sys
from typing import Iterable, Iterator, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

LOG = logging.getLogger("roiseg")


class _CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that always writes to the *current* ``sys.stderr`` (pytest swaps it)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; ignore
        pass


LOGGER_NAMESPACES: tuple[str, ...] = ("roiseg", "graph_tools")
"""Loggers whose messages the CLI shows: roiseg's own and graph_tools'."""


def setup_logging(verbose: bool = False) -> None:
    """Log ``roiseg.*`` and ``graph_tools.*`` messages to stderr as ``[name] message``."""
    level = logging.DEBUG if verbose else logging.INFO
    for name in LOGGER_NAMESPACES:
        root = logging.getLogger(name)
        root.setLevel(level)
        if not any(isinstance(h, _CurrentStderrHandler) for h in root.handlers):
            handler = _CurrentStderrHandler()
            handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
            root.addHandler(handler)
        root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """Logger under the ``roiseg`` namespace (``get_logger(__name__)``)."""
    return logging.getLogger(name if name.startswith("roiseg") else f"roiseg.{name}")


def progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    unit: str = "it",
    disable: bool = False,
    **kwargs,
) -> Iterator[T]:
    """A tqdm bar on stderr showing count, rate and ETA."""
    return tqdm(
        iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True,
        mininterval=0.5, file=sys.stderr, **kwargs,
    )
