"""User-facing errors.

Library code raises :class:`RoisegError` (or a subclass) for anything the user can fix: a missing
file, a malformed field, a tensor that does not exist. The CLI prints ``error: <message>`` on one
line and exits with status 2 (1 is reserved for "ran, but a check failed", e.g. parity); the
traceback is shown only with ``--debug``.
"""

from __future__ import annotations


class RoisegError(Exception):
    """An error caused by user input; its message names the file or field at fault."""

    exit_code: int = 2


class InputError(RoisegError):
    """Bad or missing input file, folder or field."""


class CheckFailed(RoisegError):
    """The command ran, but what it checked did not hold (e.g. parity outside tolerance)."""

    exit_code = 1
