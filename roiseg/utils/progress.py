"""Logging set-up and progress bars used by every long-running command.

On a terminal a tqdm bar shows count, rate and ETA. When stderr is not a terminal (a log file, CI, a
captured pipe) a bar would write one line per redraw; :class:`LogProgress` logs a plain line every
:data:`LOG_INTERVAL_S` seconds instead (count, percentage, rate, ETA) and one when it ends.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable, Iterator, TypeVar

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


LOG_INTERVAL_S: float = 30.0
"""Seconds between two progress lines when stderr is not a terminal."""
PROGRESS_LOG = logging.getLogger("roiseg.progress")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class LogProgress:
    """The part of tqdm's interface roiseg uses, as periodic plain log lines (``roiseg.progress``, INFO).

    Iterate it, or call :meth:`update` on a manual one (``iterable=None``); :meth:`set_postfix`
    adds ``key=value`` fields to the next line. A line: ``desc: n/total unit (p%), r unit/s, ETA t``.
    """

    def __init__(self, iterable: Iterable[T] | None, desc: str, total: int | None = None, unit: str = "it",
                 disable: bool = False, interval: float = LOG_INTERVAL_S, clock=time.monotonic) -> None:
        self.iterable, self.desc, self.unit, self.disable, self.interval, self.clock = (
            iterable, desc, unit, disable, interval, clock)
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.n, self.postfix, self.closed = total, 0, "", False
        self.start = self.last = clock()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __iter__(self) -> Iterator[T]:
        try:
            for item in () if self.iterable is None else self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def line(self, now: float, done: bool = False) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text = f"{self.desc}: {count} {self.unit}"
        if self.total:
            text += f" ({100.0 * self.n / self.total:.0f}%)"
        text += f", {rate:.3g} {self.unit}/s"
        if done:
            text += f", done in {_duration(elapsed)}"
        elif self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.n) / rate)}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if not self.disable and now - self.last >= self.interval:
            self.last = now
            PROGRESS_LOG.info(self.line(now))

    def close(self) -> None:
        if not self.closed and not self.disable and self.n > 0:
            PROGRESS_LOG.info(self.line(self.clock(), done=True))
        self.closed = True


def progress(
    iterable: Iterable[T],
    desc: str,
    total: int | None = None,
    unit: str = "it",
    disable: bool = False,
    **kwargs,
) -> Iterator[T]:
    """A tqdm bar on stderr showing count, rate and ETA; plain log lines (:class:`LogProgress`) when
    stderr is not a terminal."""
    if not _is_terminal(sys.stderr):
        return LogProgress(iterable, desc, total=total, unit=unit, disable=disable)  # type: ignore[return-value]
    return tqdm(
        iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True,
        mininterval=0.5, file=sys.stderr, **kwargs,
    )


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
