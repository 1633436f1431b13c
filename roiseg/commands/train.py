"""``roiseg train``: train the ROI mask head on frozen detector features (also under ``torchrun``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# flag dest -> config key; only flags given on the command line override the config.
FLAG_KEYS: dict[str, str] = {
    "data_root": "data.root",
    "train_ann": "data.train_ann",
    "val_ann": "data.val_ann",
    "train_images": "data.train_images",
    "val_images": "data.val_images",
    "analyze_json": "data.analyze_json",
    "batch_size": "data.batch_size",
    "max_rois_per_step": "data.max_rois_per_step",
    "num_workers": "data.num_workers",
    "max_train_images": "data.max_train_images",
    "max_val_images": "data.max_val_images",
    "extractor": "features.extractor",
    "feature_tensor": "features.tensor",
    "cache": "features.cache",
    "variant": "head.variant",
    "lr": "optim.lr",
    "epochs": "train.epochs",
    "seed": "train.seed",
    "device": "train.device",
    "out": "train.out",
    "keep": "train.keep",
    "stop_after": "train.stop_after",
}


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
    g = p.add_argument_group("data")
    g.add_argument("--data-root", help="data folder in the seed layout (default data)")
    g.add_argument("--train-ann", help="person-only train JSON (default <data-root>/annotations/instances_train2017_person_only_no_crowd.json)")
    g.add_argument("--val-ann", help="person-only val JSON (default <data-root>/annotations/instances_val2017_person_only_no_crowd.json)")
    g.add_argument("--train-images", help="train image folder (default <data-root>/images/train2017)")
    g.add_argument("--val-images", help="val image folder (default <data-root>/images/val2017)")
    g.add_argument("--analyze-json", help="data_analyze.json with the loss class weights (computed when absent)")
    g.add_argument("--batch-size", type=int, help="images per step")
    g.add_argument("--max-rois-per-step", type=int, help="cap on ROIs per step")
    g.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    g.add_argument("--max-train-images", type=int, help="use the first N train images (0 = all)")
    g.add_argument("--max-val-images", type=int, help="use the first N val images (0 = all)")
    g = p.add_argument_group("features and head")
    g.add_argument("--extractor", help="detector ONNX the features are read from")
    g.add_argument("--feature-tensor", help="feature tensor name (default /model.34/Concat_output_0)")
    g.add_argument("--cache", metavar="DIR|none", help="feature-cache folder, or none to extract every epoch")
    g.add_argument("--variant", choices=("baseline", "detail"), help="head variant")
    g = p.add_argument_group("run")
    g.add_argument("--epochs", type=int, help="number of epochs (the schedule spans them)")
    g.add_argument("--lr", type=float, help="peak learning rate")
    g.add_argument("--seed", type=int, help="seed of initialisation, data order and ROI sampling")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--out", help="run folder for checkpoints, metrics.jsonl, curves.png, pictures (default checkpoints)")
    g.add_argument("--keep", type=int, help="keep the newest N epoch checkpoints (0 = all); best.pth is kept")
    g.add_argument("--stop-after", type=int, help="stop after this epoch without shortening the schedule")
    p.set_defaults(func=run)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the flags given (``--set`` first, explicit flags win)."""
    from roiseg.training.config import parse_set

    items = parse_set(args.set_items)
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            items[key] = value
    return items


def run(args: argparse.Namespace) -> int:
    from roiseg.training.engine import format_summary, resolve_run_config, train

    cfg, resume = resolve_run_config(args.config, overrides_from_args(args), args.resume)
    summary = train(cfg, resume)
    if summary.get("rank", 0) == 0:
        for line in format_summary(summary):
            print(line)
    return 0
