"""graph_tools' logger namespace: ``graph_tools.<module>``; the application decides where it goes."""

from __future__ import annotations

import logging

ROOT_LOGGER: str = "graph_tools"


def get_logger(name: str) -> logging.Logger:
    """Logger under the ``graph_tools`` namespace (``get_logger(__name__)``)."""
    return logging.getLogger(name if name.startswith(ROOT_LOGGER) else f"{ROOT_LOGGER}.{name}")
