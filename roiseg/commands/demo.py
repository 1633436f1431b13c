"""``roiseg demo``: the whole pipeline offline on generated data and a stand-in detector."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline offline on generated data and a stand-in detector",
        description="Generate data and a stand-in detector, prepare, analyze, train, fuse, parity-check and "
        "predict, then print what was produced and measured. About 3-5 minutes on 2 CPU cores.",
    )
    p.add_argument("--workdir", type=Path, default=Path("roiseg_demo"), help="output folder (default: roiseg_demo)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: 3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from roiseg.demo import DemoConfig, run_demo
    from roiseg.errors import InputError

    cfg = DemoConfig(workdir=args.workdir, seed=args.seed)
    if args.epochs is not None:
        if args.epochs < 1:
            raise InputError("--epochs must be >= 1")
        cfg.epochs = args.epochs
    summary = run_demo(cfg)
    print("\n".join(summary.lines()))
    return 0 if summary.numbers["parity_passed"] else 1
