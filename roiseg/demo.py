"""``roiseg demo``: the whole pipeline, offline, on generated data and a stand-in detector.

Steps (each one is the library function behind the matching CLI command):

1. generate a COCO-format person dataset (``roiseg.synthetic.coco``) in ``<workdir>/data``;
2. export a stand-in YOLO-like detector whose stride-8 feature tensor is named
   ``/model.34/Concat_output_0`` like the reference YOLOv9 (``<workdir>/ext_extractor``);
3. ``prepare-coco`` (train and val) and ``analyze`` (``<workdir>/data_analyze.json``);
4. ``train`` a few epochs (``<workdir>/checkpoints``: checkpoints, validation pictures, curves);
5. ``fuse`` detector + best head (``<workdir>/models/roiseg_fused.onnx``);
6. ``parity-check`` on the val images (``<workdir>/parity.json``);
7. ``predict`` on one val image (``<workdir>/predict_overlay.png``) and time the fused model.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from roiseg.conventions import (
    BEST_CHECKPOINT,
    CURVES_FILE,
    DEFAULT_ANALYZE_JSON,
    DEFAULT_FUSED_MODEL,
    DEFAULT_IMAGE_INPUT,
    DEMO_DATA_DIR,
    DEMO_DETECTOR_DIR,
    DEMO_OVERLAY,
    DEMO_RUN_DIR,
    DEMO_STAND_IN_PATTERN,
    DEMO_SUMMARY,
    DEMO_WORKDIR,
    FEATURE_CACHE_DIR,
    FUSED_ROIS_INPUT,
    PARITY_REPORT,
    VALIDATION_PICTURE_GLOB,
    coco_bbox_to_roi,
    person_only_name,
    preprocess,
    read_image,
)
from roiseg.utils.atomic import ensure_writable_dir, write_json
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)


@dataclass
class DemoConfig:
    """Sizes chosen so the demo finishes within 5 minutes on 2 idle CPU cores.

    Many small images and a small head: the head needs a few thousand steps to learn the generated
    persons (see docs/heads.md); the stand-in has fewer channels than the reference (64 vs 1024).
    """

    workdir: Path = Path(DEMO_WORKDIR)
    epochs: int = 3
    seed: int = 0
    n_train: int = 750
    n_val: int = 12
    image_hw: tuple[int, int] = (240, 320)
    """Generated image size (original resolution)."""
    input_hw: tuple[int, int] = (192, 192)
    """Stand-in detector input; its stride-8 features are (H/8, W/8)."""
    persons: tuple[int, int] = (1, 3)
    """Persons per generated image (min, max); they overlap, so non-target pixels occur."""
    channels: int = 64
    """Stand-in feature channels (the reference has 1024; see bench/ for reference-shape costs)."""
    hidden: int = 64
    mask_size: int = 28
    lr: float = 3e-3
    batch_size: int = 2
    num_workers: int = 0
    latency_reps: int = 7


@dataclass
class DemoSummary:
    files: dict[str, str] = field(default_factory=dict)
    numbers: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        n = self.numbers
        out = ["", "roiseg demo: done", ""]
        out.append(f"  validation mean per-ROI target IoU  {n['mean_roi_target_iou']:.4f}"
                   f"  (box baseline {n['box_baseline_roi_target_iou']:.4f}), mIoU {n['miou']:.4f}")
        out.append(f"  parity fused vs PyTorch             max abs {n['parity_max_abs']:.2e}, "
                   f"argmax agreement {100 * n['parity_argmax_agreement']:.4f}% -> {'PASS' if n['parity_passed'] else 'FAIL'}")
        out.append(f"  fused model latency (CPU, median)   N=1: {n['latency_ms_n1']:.1f} ms, N=8: {n['latency_ms_n8']:.1f} ms")
        out.append(f"  total time                          {n['total_s']:.0f} s")
        out.append("")
        width = max(len(k) for k in self.files)
        out += [f"  {k:<{width}}  {v}" for k, v in self.files.items()]
        return out


def _prepare(cfg: DemoConfig, data_root: Path) -> dict[str, Path]:
    from roiseg.data.analyze import analyze
    from roiseg.data.prepare import prepare_coco
    from roiseg.synthetic.coco import SPLITS, write_synthetic_coco

    LOG.info("demo 2/7: generating %d train + %d val images in %s", cfg.n_train, cfg.n_val, data_root)
    made = write_synthetic_coco(data_root, cfg.n_train, cfg.n_val, image_hw=cfg.image_hw, seed=cfg.seed,
                                persons=cfg.persons)
    LOG.info("demo 3/7: prepare-coco and analyze")
    prepared = {}
    for split, instances in made["annotations"].items():
        instances = Path(instances)
        prepare_coco(instances, instances.parent)
        prepared[split] = instances.parent / person_only_name(instances.stem)
    train_split, val_split = SPLITS
    analyze_json = cfg.workdir / DEFAULT_ANALYZE_JSON
    write_json(analyze_json, analyze(prepared[train_split], workers=1))
    return {"train_ann": prepared[train_split], "val_ann": prepared[val_split],
            "val_images": Path(made["images"][val_split]), "analyze_json": analyze_json}


def _detector(cfg: DemoConfig) -> Path:
    from roiseg.synthetic.detector import build_stand_in_detector

    h, w = cfg.input_hw
    out = cfg.workdir / DEMO_DETECTOR_DIR / DEMO_STAND_IN_PATTERN.format(h=h, w=w)
    LOG.info("demo 1/7: exporting the stand-in detector %s (%d channels at stride 8)", out, cfg.channels)
    return build_stand_in_detector(out, channels=cfg.channels, input_hw=cfg.input_hw, mode="full", seed=cfg.seed)


def _train(cfg: DemoConfig, detector: Path, data_root: Path, paths: dict[str, Path]) -> dict[str, Any]:
    from roiseg.training.config import TrainConfig
    from roiseg.training.engine import train

    tc = TrainConfig()
    tc.data.root = str(data_root)
    tc.data.analyze_json = str(paths["analyze_json"])
    tc.data.num_workers = cfg.num_workers
    tc.data.batch_size = cfg.batch_size
    tc.data.validation_images = []  # generated data has none of COCO's named validation images
    tc.features.extractor = str(detector)
    tc.features.cache = str(cfg.workdir / FEATURE_CACHE_DIR)
    tc.head.hidden = cfg.hidden
    tc.head.mask_size = cfg.mask_size
    tc.train.epochs = cfg.epochs
    tc.train.seed = cfg.seed
    tc.train.device = "auto"
    tc.train.out = str(cfg.workdir / DEMO_RUN_DIR)
    tc.optim.lr = cfg.lr
    tc.optim.warmup_epochs = 0.5
    LOG.info("demo 4/7: training %d epochs -> %s", cfg.epochs, tc.train.out)
    return train(tc.validate())


def _latency(model: Path, image: np.ndarray, rois: np.ndarray, reps: int) -> float:
    """Median wall time in ms of one fused-model run on CPU (after one warm-up run)."""
    from graph_tools import create_session

    sess = create_session(model)
    feeds = {DEFAULT_IMAGE_INPUT: image, FUSED_ROIS_INPUT: rois}
    sess.run(None, feeds)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)


def _first_val_image(val_ann: Path, val_images: Path) -> tuple[Path, np.ndarray]:
    """The first val image and its person boxes in pixels ``x1, y1, x2, y2``."""
    data = json.loads(val_ann.read_text())
    img = data["images"][0]
    boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == img["id"]]
    px = np.array([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=np.float32)
    return val_images / img["file_name"], px


def run_demo(cfg: DemoConfig) -> DemoSummary:
    """Run the seven steps in ``cfg.workdir`` and return what was produced and measured."""
    from roiseg.export.fuse import fuse
    from roiseg.verify.parity import run_parity
    from roiseg.runtime.predict import predict_image

    t_start = time.perf_counter()
    workdir = ensure_writable_dir(cfg.workdir)
    data_root = workdir / DEMO_DATA_DIR
    detector = _detector(cfg)
    paths = _prepare(cfg, data_root)
    summary = _train(cfg, detector, data_root, paths)
    best = Path(summary["out"]) / BEST_CHECKPOINT

    LOG.info("demo 5/7: fusing %s + %s", detector.name, best.name)
    fused_path = workdir / DEFAULT_FUSED_MODEL
    fuse_report = fuse(detector, best, out=fused_path)

    LOG.info("demo 6/7: parity check on the val images")
    report = run_parity(detector, best, fused=fused_path, annotations=paths["val_ann"],
                        images=paths["val_images"], max_images=3)
    parity_json = write_json(workdir / PARITY_REPORT, report)

    LOG.info("demo 7/7: predict and latency")
    image_path, boxes_px = _first_val_image(paths["val_ann"], paths["val_images"])
    overlay = workdir / DEMO_OVERLAY
    predict_image(fused_path, image_path, boxes_px.tolist(), out=overlay, device="cpu")
    bgr = read_image(image_path)
    x = preprocess(bgr, cfg.input_hw)
    rois1 = np.stack([coco_bbox_to_roi([b[0], b[1], b[2] - b[0], b[3] - b[1]], bgr.shape[:2]) for b in boxes_px])
    rois8 = np.resize(rois1, (8, 4)).astype(np.float32)

    last, fused_stage, out = summary["history"][-1], report["stages"]["fused"], DemoSummary()
    pictures = sorted(Path(summary["out"]).glob(VALIDATION_PICTURE_GLOB))
    out.files = {
        "generated data": str(data_root),
        "stand-in detector": str(detector),
        DEFAULT_ANALYZE_JSON: str(paths["analyze_json"]),
        "checkpoints": str(summary["out"]),
        "best checkpoint": str(best),
        "validation picture": str(pictures[-1]) if pictures else "(none)",
        "curves": str(Path(summary["out"]) / CURVES_FILE),
        "fused model": str(fuse_report.out),
        "parity report": str(parity_json),
        "predict overlay": str(overlay),
    }
    out.numbers = {
        "mean_roi_target_iou": float(last["mean_roi_target_iou"]),
        "box_baseline_roi_target_iou": float(last["box_baseline_roi_target_iou"]),
        "miou": float(last["miou"]),
        "parity_max_abs": float(fused_stage["max_abs"]),
        "parity_argmax_agreement": float(fused_stage["argmax_agreement"]),
        "parity_passed": bool(report["passed"]),
        "latency_ms_n1": _latency(fused_path, x, rois1[:1], cfg.latency_reps),
        "latency_ms_n8": _latency(fused_path, x, rois8, cfg.latency_reps),
        "total_s": time.perf_counter() - t_start,
    }
    write_json(workdir / DEMO_SUMMARY, {"files": out.files, "numbers": out.numbers})
    return out
