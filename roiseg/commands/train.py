"""``roiseg train``: train the ROI mask head on frozen detector features (also under ``torchrun``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

_TYPES = {int: int, float: float}
"""argparse ``type`` per field type; other fields are taken as strings (and coerced by the config)."""


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One option per config field with flag metadata, grouped by section; ``dest`` is the ``section.key``."""
    from roiseg.training.config import TrainConfig
    from roiseg.utils.overrides import flag_fields

    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in flag_fields(TrainConfig):
        if f.section not in groups:
            groups[f.section] = p.add_argument_group(f"[{f.section}]")
        metavar = f.metavar or (None if f.choices else f.flag.lstrip("-").upper().replace("-", "_"))
        groups[f.section].add_argument(f.flag, dest=f.dotted, type=_TYPES.get(f.type), choices=f.choices, metavar=metavar,
                                       default=None, help=f.help)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the ROI mask head (checkpoint, metrics, curves and validation picture each epoch)",
        description=(
            "Train the ROI mask head on features read from the detector ONNX. Options come from the built-in "
            "defaults (= configs/default.toml), then --config, then the flags below and --set. Multi-GPU: "
            "uv run torchrun --nproc_per_node N -m roiseg train ..."
        ),
    )
    p.add_argument("--config", type=Path, default=None, help="TOML config (every key optional; see configs/default.toml)")
    p.add_argument("--set", dest="set_items", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config key, value in TOML syntax (repeatable), e.g. --set optim.grad_clip=0.5")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT|DIR",
                   help="continue a run: the latest checkpoint in --out (no value), in DIR, or the given file")
    p.set_defaults(func=run)


def add_details(p: argparse.ArgumentParser) -> None:
    """The config flags (their schema imports torch: added only when ``train`` is on the command line)."""
    add_config_flags(p)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the flags given (``--set`` first, explicit flags win)."""
    from roiseg.training.config import TrainConfig
    from roiseg.utils.overrides import flag_fields, parse_set

    items = parse_set(args.set_items)
    for f in flag_fields(TrainConfig):
        value = getattr(args, f.dotted, None)
        if value is not None:
            items[f.dotted] = value
    return items


def run(args: argparse.Namespace) -> int:
    from roiseg.training.engine import train
    from roiseg.training.run_state import resolve_run_config
    from roiseg.training.summary import format_summary

    cfg, resume = resolve_run_config(args.config, overrides_from_args(args), args.resume)
    summary = train(cfg, resume)
    if summary.get("rank", 0) == 0:
        for line in format_summary(summary):
            print(line)
    return 0
