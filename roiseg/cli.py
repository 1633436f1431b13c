"""The ``roiseg`` command line: a thin layer that parses, calls library functions and prints.

Each subcommand lives in ``roiseg/commands/<name>.py`` and defines ``add_parser(subparsers)``
(which sets ``func``); a command whose options need heavy imports (``train``: its config schema imports
torch) adds them in ``add_details(parser)``, called only when that command is on the line, so building
the parser imports no torch. Errors the user can fix are printed on one line; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from typing import Sequence

from roiseg import __version__
from roiseg.errors import RoisegError
from roiseg.utils.progress import setup_logging

# Subcommand modules under roiseg.commands, in the order --help lists them.
COMMANDS: tuple[str, ...] = (
    "prepare_coco",
    "analyze",
    "train",
    "fuse",
    "parity_check",
    "predict",
    "evaluate",
    "demo",
)


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand named on ``argv`` (the first word that is no option: the global options take no value)."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; the options of ``command`` in full (:func:`command_of`)."""
    parser = argparse.ArgumentParser(
        prog="roiseg",
        description="Train a ROI mask head on frozen detector ONNX features and fuse both into one ONNX model.",
    )
    parser.add_argument("--version", action="version", version=f"roiseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug-level logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"roiseg.commands.{name}")
        module.add_parser(sub)
        if command == name.replace("_", "-") and hasattr(module, "add_details"):
            module.add_details(sub.choices[command])
    return parser


NUMBER_LIST = re.compile(r"^-\s*[0-9.]+(?:[eE][-+]?\d+)?(?:\s*,\s*[-+]?[0-9.]+(?:[eE][-+]?\d+)?)+$")
"""A comma-separated list of numbers that starts with a negative one, e.g. ``-50,-50,100,100``."""


def glue_negative_values(argv: Sequence[str]) -> list[str]:
    """``--opt -50,-50,100,100`` -> ``--opt=-50,-50,100,100``.

    argparse takes a value that starts with ``-`` (and is not a single number) for an option and
    stops with "expected one argument"; a comma-separated list of numbers is never an option.
    """
    out: list[str] = []
    for token in argv:
        prev = out[-1] if out else ""
        if NUMBER_LIST.match(token) and prev.startswith("--") and "=" not in prev:
            out[-1] = f"{prev}={token}"
        else:
            out.append(token)
    return out


def _wants_debug(argv: Sequence[str]) -> bool:
    return "--debug" in argv


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug is accepted anywhere on the line, also after the subcommand.
    debug = _wants_debug(argv)
    argv = glue_negative_values([a for a in argv if a != "--debug"])
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    try:
        code = args.func(args)
    except RoisegError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: still one line unless --debug
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 3
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
