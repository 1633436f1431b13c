"""Helpers of the training tests: small generated COCO person data and a tiny, fast head config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_HEAD: dict[str, Any] = {
    "head.variant": "baseline", "head.hidden": 16, "head.num_convs": 1, "head.roi_size": 7,
    "head.mask_size": 14, "head.groups": 8, "head.detail_channels": 8,
}


def make_person_data(root: Path, n_train: int = 8, n_val: int = 4, image_hw: tuple[int, int] = (96, 128),
                     seed: int = 0) -> Path:
    """Generated COCO person data under ``root`` in the seed layout, prepared by prepare-coco; returns the data root.

    ``write_synthetic_coco`` puts one crowd image in each split, which preparation drops.
    """
    from roiseg.data.prepare import prepare_coco
    from roiseg.synthetic.coco import write_synthetic_coco

    report = write_synthetic_coco(root, n_train, n_val, image_hw=image_hw, seed=seed)
    for split in ("train2017", "val2017"):
        prepare_coco(report["annotations"][split], root / "annotations")
    return root


def tiny_overrides(data_root: Path, extractor: Path, out: Path, **extra: Any) -> dict[str, Any]:
    """Config overrides of a fast CPU run on ``data_root`` (no workers, no data_analyze.json, tiny head)."""
    items: dict[str, Any] = {
        "data.root": str(data_root),
        "data.analyze_json": str(out.parent / f"{out.name}_no_analysis.json"),
        "data.num_workers": 0,
        "data.batch_size": 4,
        "data.max_rois_per_step": 8,
        "features.extractor": str(extractor),
        "features.cache": "none",
        "train.out": str(out),
        "train.device": "cpu",
        "train.epochs": 2,
        "optim.lr": 3e-3,
        **TINY_HEAD,
    }
    items.update({k.replace("__", "."): v for k, v in extra.items()})
    return items
