"""The training loop: build everything from a :class:`TrainConfig`, train, validate, checkpoint, resume.

One step (:func:`roiseg.training.step.train_step`): a batch of images (``data.batch_size``,
:func:`roiseg.data.dataset.collate_images`) -> frozen features from the :class:`FeatureCache` (the
ONNX extractor runs on cache misses only) -> at most ``data.max_rois_per_step`` of the batch's ROIs
-> head logits pasted to the full input resolution -> :class:`SegLoss` -> AdamW step (AMP and loss
scaling on CUDA, gradient clipping), learning rate stepped per step (:mod:`roiseg.training.optim`).

Each epoch: validation over the whole val set (:class:`SegMetrics`, summed over ranks), then rank
0 writes ``checkpoint_epoch_{E:04d}_{H}x{W}_{floor(mIoU*1e4):04d}.pth``, refreshes ``best.pth``,
prunes to ``train.keep``, appends the epoch record to ``metrics.jsonl``, redraws ``curves.png`` and
draws ``validation_all_images_epoch_{E:04d}.png``. Seeds, RNG states, checkpoint contents and
resuming: :mod:`roiseg.training.run_state`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch
from torch.utils.data import DataLoader

from roiseg.conventions import CURVES_FILE, METRICS_FILE, checkpoint_name, validation_picture_name
from roiseg.data.dataset import CocoPersonImages, ImageBatch, SkipCounter
from roiseg.features.cache import FeatureCache
from roiseg.features.extractor import ExtractorInfo, OnnxFeatureExtractor
from roiseg.modeling import MaskHead, build_head, count_parameters
from roiseg.modeling.paste import class_ids, masks_from_logits, paste_roi_logits, roi_inside_masks
from roiseg.training.build import build_datasets, build_extractor, build_loaders, build_loss, build_step_setup
from roiseg.training.checkpoint import load_checkpoint, prune_checkpoints, record_best, save_checkpoint
from roiseg.training.config import TrainConfig
from roiseg.training.distributed import (
    DistContext,
    ShardSampler,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
)
from roiseg.training.metrics import SegMetrics
from roiseg.training.metrics_log import write_epoch_record
from roiseg.training.run_state import check_resumable, checkpoint_state, restore_training_state, seed_everything
from roiseg.training.step import StepSetup, step_seed, train_step
from roiseg.training.summary import fmt_metric, skipped_note
from roiseg.training.visualize import (
    plot_curves,
    predictions_to_original,
    render_validation_picture,
    select_validation_images,
)
from roiseg.utils.atomic import check_output_dir, ensure_writable_dir
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)

Features = Union[torch.Tensor, list[torch.Tensor]]
"""A batch's features on the training device: the primary tap [B, C, h, w], or every tap (primary first)."""
FeatureSource = Callable[[ImageBatch], Features]


@dataclass
class EpochStats:
    """Accumulated training-loss sums of one epoch on this rank (ROI-weighted)."""

    loss: float = 0.0
    ce: float = 0.0
    dice: float = 0.0
    person: float = 0.0  # the person-map loss (0 without one)
    rois: int = 0
    steps: int = 0
    skipped: int = 0  # unreadable images left out of the epoch's batches

    def add(self, parts: dict[str, float], n: int) -> None:
        self.loss += parts["total"] * n
        self.ce += parts["ce"] * n
        self.dice += parts["dice"] * n
        self.person += parts.get("person", 0.0) * n
        self.rois += n
        self.steps += 1

    def tensor(self) -> torch.Tensor:
        return torch.tensor([self.loss, self.ce, self.dice, self.rois, self.steps, self.skipped, self.person],
                            dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Pieces of a run, built from the config
# --------------------------------------------------------------------------------------------
@dataclass
class Trainer:
    """Everything a run needs, built by :meth:`build`; :meth:`fit` runs the epochs."""

    cfg: TrainConfig
    ctx: DistContext
    extractor: OnnxFeatureExtractor
    cache: FeatureCache
    train_set: CocoPersonImages
    val_set: CocoPersonImages
    head: MaskHead
    step: StepSetup
    train_sampler: ShardSampler
    train_loader: DataLoader
    val_loader: DataLoader
    out: Path
    start_epoch: int = 1
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "miou": -1.0, "file": None})
    picture_indices: list[int] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.head.cfg.input_hw

    def autocast(self) -> torch.autocast:
        return self.step.autocast()

    # ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: TrainConfig, ctx: DistContext, resume: Path | None = None) -> "Trainer":
        """Extractor, cache, datasets, head, loss, optimizer, schedule; restored from ``resume`` when given."""
        out = Path(cfg.train.out)
        if ctx.is_main:
            check_output_dir(out)  # refused now; created only once everything below is built
        state = load_checkpoint(resume, map_location="cpu") if resume is not None else None
        extractor = build_extractor(cfg, ctx)
        info = extractor.info
        head_cfg = cfg.head.head_config(info.channels, info.stride, info.input_hw, info.extra_channels,
                                        info.extra_strides)
        if state is not None:
            check_resumable(state, head_cfg, info, resume)
        cache = FeatureCache(extractor, cfg.features.cache_dir)
        train_set, val_set = build_datasets(cfg, extractor)
        loss_fn = build_loss(cfg, ctx, train_set)

        seed_everything(cfg.train.seed)
        head = build_head(head_cfg).to(ctx.device)
        if state is not None:
            head.load_state_dict(state["model"])
        _log_head(head, info)
        sampler, train_loader, val_loader = build_loaders(cfg, ctx, train_set, val_set)
        step = build_step_setup(cfg, ctx, head, loss_fn, len(train_loader))

        trainer = cls(cfg=cfg, ctx=ctx, extractor=extractor, cache=cache, train_set=train_set, val_set=val_set,
                      head=head, step=step, train_sampler=sampler, train_loader=train_loader, val_loader=val_loader,
                      out=out)
        if ctx.is_main:  # inputs checked: the run starts
            ensure_writable_dir(out)
            trainer.picture_indices = select_validation_images(val_set, cfg.data.validation_images) if cfg.train.picture else []
        if state is not None:
            trainer._restore(state, resume)
        return trainer

    def _restore(self, state: dict[str, Any], source: Path) -> None:
        """Training state, best record and start epoch from a checkpoint; ``metrics.jsonl`` cut back to it."""
        done, best = restore_training_state(state, self.step, source)
        self.start_epoch = done + 1
        self.best = dict(best or self.best)
        LOG.info("resumed from %s: epoch %d done, continuing at epoch %d", source, done, self.start_epoch)
        if self.ctx.is_main:  # a later run may have left more epochs in metrics.jsonl
            record = state.get("metrics") or {}
            write_epoch_record(self.out / METRICS_FILE, done, record if record.get("epoch") == done else None)

    # ---------------------------------------------------------------------------------------
    def features(self, batch: ImageBatch) -> Features:
        """A batch's features on the training device (cache first, extractor on misses): the primary tap
        [B, C, h, w], or every tap (primary first) when the head reads extra taps."""
        return self.image_features(batch.paths, batch.images, batch.flipped or False, batch.zoomed)

    def image_features(self, paths: list[str], images: torch.Tensor, flipped: bool | list[bool] = False,
                       zoomed: Sequence[bool] = ()) -> Features:
        """Features of preprocessed ``images`` [B, 3, H, W] read from the files ``paths`` (mirrored where
        ``flipped``; zoomed views, never cached, where ``zoomed``); see :meth:`features`."""
        taps = [t.to(self.device, non_blocking=True) for t in self.cache.taps(paths, images, flipped, zoomed)]
        return taps if len(taps) > 1 else taps[0]

    def train_one_epoch(self, epoch: int, features: FeatureSource | None = None) -> dict[str, float]:
        """One pass over this rank's shard; returns the epoch's train record (summed over ranks).

        ``features``: where a batch's features come from (default :meth:`features`; the benchmark
        passes a timed one).
        """
        features = features or self.features
        self.step.model.train()
        self.train_sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        stats, skips = EpochStats(), SkipCounter()  # skips: unreadable images left out of the batches
        start = time.perf_counter()
        bar = progress(self.train_loader, desc=f"epoch {epoch}/{self.cfg.train.epochs}", total=len(self.train_loader),
                       unit="step", disable=not self.ctx.is_main)
        for i, batch in enumerate(skips(bar)):
            batch = batch.to(self.device)
            parts, n = train_step(self.step, features(batch), batch.images, batch.rois, batch.batch_idx,
                                  batch.targets, seed=step_seed(self.cfg.train.seed, epoch, i, self.ctx.rank),
                                  person=batch.person)
            stats.add(parts, n)
            if self.ctx.is_main:
                bar.set_postfix(loss=f"{stats.loss / stats.rois:.4f}",
                                rois_s=f"{stats.rois / (time.perf_counter() - start):.1f}",
                                lr=f"{self.step.scheduler.get_last_lr()[0]:.2e}", refresh=False)
        stats.skipped = skips.count
        return self._train_record(stats, time.perf_counter() - start)

    def _train_record(self, stats: EpochStats, elapsed: float) -> dict[str, float]:
        totals = all_reduce_sum(stats.tensor(), self.ctx).tolist()
        rois = max(totals[3], 1.0)
        return {"train_loss": totals[0] / rois, "train_ce": totals[1] / rois, "train_dice": totals[2] / rois,
                "train_person": totals[6] / rois,
                "train_rois": int(totals[3]), "train_steps": int(stats.steps), "rois_per_s": totals[3] / max(elapsed, 1e-9),
                "train_time_s": elapsed, "lr": float(self.step.scheduler.get_last_lr()[0]),
                "skipped_images": int(totals[5])}

    @torch.no_grad()
    def validate(self, epoch: int | None = None) -> dict[str, Any]:
        """Metrics of the head on the whole val set (all ranks' shards summed) plus ``val_loss``."""
        head = self.head.eval()
        metrics = SegMetrics()
        loss_sum, skips = torch.zeros(3, dtype=torch.float64), SkipCounter()  # loss * ROIs, ROIs, skipped images
        cap = self.cfg.data.max_rois_per_step
        start = time.perf_counter()
        desc = "validate" if epoch is None else f"validate {epoch}"
        for batch in skips(progress(self.val_loader, desc=desc, total=len(self.val_loader), unit="batch",
                                    disable=not self.ctx.is_main)):
            batch = batch.to(self.device)
            feats = self.features(batch)
            with self.autocast():  # every ROI of the batch at once (a ROI may read the others: neighbour_map) ...
                grid_logits = head(feats, batch.rois, batch.batch_idx, batch.images)
            for lo in range(0, len(batch.rois), cap):  # ... pasted to [cap, 3, H, W] at a time
                sl = slice(lo, lo + cap)
                rois, targets = batch.rois[sl], batch.targets[sl]
                inside = roi_inside_masks(rois, self.input_hw)
                with self.autocast():
                    logits = paste_roi_logits(grid_logits[sl], rois, self.input_hw)
                    loss, _ = self.step.loss_fn(logits, targets, inside)
                pred = class_ids(masks_from_logits(logits.float(), inside))
                metrics.update(pred, targets, batch.areas[sl], inside)
                loss_sum += torch.tensor([float(loss) * len(rois), len(rois), 0.0], dtype=torch.float64)
        metrics.load_state(all_reduce_sum(metrics.state(), self.ctx))
        loss_sum[2] = skips.count
        loss_sum = all_reduce_sum(loss_sum, self.ctx)
        result = metrics.compute()
        result["val_loss"] = float(loss_sum[0] / max(float(loss_sum[1]), 1.0))
        result["val_time_s"] = time.perf_counter() - start
        result["val_skipped_images"] = int(loss_sum[2])
        return result

    @torch.no_grad()
    def draw_validation_picture(self, epoch: int) -> Path | None:
        """``validation_all_images_epoch_{epoch:04d}.png``: ground truth vs prediction of the chosen val images."""
        if not self.picture_indices:
            return None
        head = self.head.eval()
        pred_masks = []
        for i in self.picture_indices:
            item = self.val_set[i]
            image = item.image[None].to(self.device)
            feats = self.image_features([item.path], image)
            rois = item.rois.to(self.device)
            with self.autocast():
                probs = head.predict_masks(feats, rois, torch.zeros(len(rois), dtype=torch.int64, device=self.device), image)
            pred_masks.append(predictions_to_original(probs.float(), item.orig_hw))
        return render_validation_picture(self.val_set, self.picture_indices, pred_masks,
                                         self.out / validation_picture_name(epoch))

    # ---------------------------------------------------------------------------------------
    def save_epoch(self, epoch: int, record: dict[str, Any]) -> Path:
        """Rank 0: checkpoint, ``best.pth``, pruning, ``metrics.jsonl`` and ``curves.png`` of an epoch."""
        miou = record.get("miou") or 0.0
        path = self.out / checkpoint_name(epoch, self.input_hw, miou)
        record["checkpoint"] = path.name
        is_best = miou > self.best["miou"]
        if is_best:
            self.best = {"epoch": epoch, "miou": miou, "file": path.name}
        save_checkpoint(path, checkpoint_state(epoch, self.head, self.extractor.info, self.cfg, self.step, record,
                                               self.best))
        if is_best:
            record_best(path)
        for old in prune_checkpoints(self.out, self.cfg.train.keep):
            LOG.info("pruned %s (keep %d)", old.name, self.cfg.train.keep)
        write_epoch_record(self.out / METRICS_FILE, epoch, record)
        plot_curves(self.out / METRICS_FILE, self.out / CURVES_FILE)
        return path

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Train and validate one epoch; rank 0 saves it. Returns the epoch record."""
        t0 = time.perf_counter()
        hits, misses, calls = self.cache.hits, self.cache.misses, self.extractor.calls
        record: dict[str, Any] = {"epoch": epoch}
        record.update(self.train_one_epoch(epoch))
        record.update(self.validate(epoch))
        record.update({
            "epoch_time_s": time.perf_counter() - t0,
            "feature_cache_hits": self.cache.hits - hits,
            "feature_cache_misses": self.cache.misses - misses,
            "extractor_calls": self.extractor.calls - calls,
        })
        if self.ctx.is_main:
            path = self.save_epoch(epoch, record)
            if self.cfg.train.picture:
                self.draw_validation_picture(epoch)
            LOG.info("epoch %d: loss %.4f, mIoU %s, mean ROI target IoU %s (box baseline %s) -> %s%s", epoch,
                     record["train_loss"], fmt_metric(record.get("miou")), fmt_metric(record.get("mean_roi_target_iou")),
                     fmt_metric(record.get("box_baseline_roi_target_iou")), path.name, skipped_note(record))
        barrier(self.ctx)
        return record

    def fit(self) -> dict[str, Any]:
        """Run epochs ``start_epoch .. train.epochs`` (or until ``train.stop_after``); returns a summary."""
        cfg = self.cfg
        history: list[dict[str, Any]] = []
        last = self.start_epoch - 1
        if self.start_epoch > cfg.train.epochs:
            LOG.info("nothing to do: epoch %d of %d already done (raise train.epochs to continue)", last, cfg.train.epochs)
        for epoch in range(self.start_epoch, cfg.train.epochs + 1):
            history.append(self.run_epoch(epoch))
            last = epoch
            if cfg.train.stop_after and epoch >= cfg.train.stop_after:
                LOG.info("stopping after epoch %d (train.stop_after); resume the run to continue", epoch)
                break
        return {"out": str(self.out), "rank": self.ctx.rank, "last_epoch": last, "epochs": cfg.train.epochs,
                "best": dict(self.best), "history": history}


def _log_head(head: MaskHead, info: ExtractorInfo) -> None:
    LOG.info("head %s: %.2fM parameters, input %dx%d, %d-channel features at stride %d", head.cfg.variant,
             count_parameters(head) / 1e6, *info.input_hw, info.channels, info.stride)


def train(cfg: TrainConfig, resume: Path | None = None) -> dict[str, Any]:
    """Train with ``cfg`` (joining the torchrun process group when launched by torchrun); returns the summary."""
    ctx = init_distributed(cfg.train.device)
    try:
        return Trainer.build(cfg, ctx, resume).fit()
    finally:
        cleanup(ctx)


__all__ = ["EpochStats", "Trainer", "build_datasets", "build_loaders", "build_loss", "build_step_setup", "train"]
