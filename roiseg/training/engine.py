"""The training loop: build everything from a :class:`TrainConfig`, train, validate, checkpoint, resume.

One step: a batch of images (``data.batch_size``, :func:`roiseg.data.dataset.collate_images`) ->
frozen features from the :class:`FeatureCache` (the ONNX extractor runs on cache misses only) ->
at most ``data.max_rois_per_step`` of the batch's ROIs (a deterministic sample when there are
more) -> ``head(features, rois, batch_idx, images)`` ROI-grid logits, pasted to the full input
resolution -> :class:`SegLoss` on the pixels inside each ROI -> AdamW step (AMP and loss scaling
on CUDA, gradient clipping), learning rate stepped per step (linear warm-up, then cosine).

Each epoch: validation over the whole val set (:class:`SegMetrics`, summed over ranks), then rank
0 writes ``checkpoint_epoch_{E:04d}_{H}x{W}_{floor(mIoU*1e4):04d}.pth``, refreshes ``best.pth``,
prunes to ``train.keep``, appends the epoch record to ``metrics.jsonl``, redraws ``curves.png`` and
draws ``validation_all_images_epoch_{E:04d}.png``.

Determinism (so that 2 epochs == 1 epoch + ``--resume`` + 1 epoch): the image order of epoch
``e`` comes from ``torch.Generator().manual_seed(seed + e)`` (:class:`ShardSampler`), the ROI
jitter from ``dataset.set_epoch(e)``, the ROI sample of a step from ``(seed, e, step, rank)``;
model, optimizer, scheduler, scaler and RNG states are restored from the checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from roiseg.conventions import METRICS_FILE, CURVES_FILE, checkpoint_name, validation_picture_name
from roiseg.data.dataset import CocoPersonImages, ImageBatch, collate_images
from roiseg.errors import InputError
from roiseg.features.cache import FeatureCache
from roiseg.features.extractor import OnnxFeatureExtractor
from roiseg.modeling import HeadConfig, RoiMaskHead, build_head, count_parameters
from roiseg.modeling.paste import masks_from_logits, paste_roi_logits, roi_inside_masks
from roiseg.training.checkpoint import (
    check_compatible,
    load_checkpoint,
    prune_checkpoints,
    record_best,
    resolve_resume,
    save_checkpoint,
)
from roiseg.training.config import TrainConfig, load_config
from roiseg.training.distributed import (
    DistContext,
    ShardSampler,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    wrap_model,
)
from roiseg.training.loss import SegLoss, resolve_class_weights
from roiseg.training.metrics import SegMetrics
from roiseg.training.visualize import (
    plot_curves,
    predictions_to_original,
    read_metrics,
    render_validation_picture,
    select_validation_images,
)
from roiseg.utils.atomic import atomic_write, ensure_writable_dir
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)


# --------------------------------------------------------------------------------------------
# Small pure pieces
# --------------------------------------------------------------------------------------------
def lr_factor(step: int, warmup_steps: int, total_steps: int, start_factor: float, min_ratio: float) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based).

    Linear from ``start_factor`` to 1 over ``warmup_steps``, then a half cosine from 1 down to
    ``min_ratio`` at ``total_steps``; ``min_ratio`` afterwards.
    """
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    t = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integers (``np.random.SeedSequence``), for per-step generators."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def sample_rois(n: int, cap: int, seed: int) -> torch.Tensor | None:
    """Sorted indices of ``cap`` of ``n`` ROIs drawn with ``seed``; ``None`` when ``n <= cap`` (keep all)."""
    if n <= cap:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:cap].sort().values


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA RNG states (stored in checkpoints)."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state` (CUDA states are restored when as many devices are visible)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on conv weights only, none on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def write_metrics(path: Path, records: list[dict]) -> None:
    """Write ``metrics.jsonl`` (one JSON record per epoch) atomically."""
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write(path, lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------------------------
# Configuration of a run (fresh or resumed)
# --------------------------------------------------------------------------------------------
def resolve_run_config(
    toml_path: str | Path | None,
    overrides: dict[str, Any] | None,
    resume: str | Path | None,
) -> tuple[TrainConfig, Path | None]:
    """The config of a run and the checkpoint it resumes from (``None`` for a fresh run).

    ``resume``: ``None`` (fresh), ``""`` (latest checkpoint in ``train.out``), a folder (latest in
    it) or a file. A resumed run starts from the checkpoint's stored config, with ``train.out``
    set to the checkpoint's folder and ``train.stop_after`` cleared; the TOML file and the
    overrides given now are applied on top (e.g. more ``train.epochs``).
    """
    cfg = load_config(toml_path, overrides)
    if resume is None:
        return cfg, None
    path = resolve_resume(resume, cfg.train.out)
    state = load_checkpoint(path)
    base = TrainConfig().to_dict() if not isinstance(state.get("config"), dict) else json.loads(json.dumps(state["config"]))
    base.setdefault("train", {}).update({"out": str(path.parent), "stop_after": 0})
    cfg = load_config(toml_path, overrides, base=base)
    return cfg, path


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
@dataclass
class EpochStats:
    """Accumulated training-loss sums of one epoch on this rank (ROI-weighted)."""

    loss: float = 0.0
    ce: float = 0.0
    dice: float = 0.0
    rois: int = 0
    steps: int = 0

    def add(self, parts: dict[str, float], n: int) -> None:
        self.loss += parts["total"] * n
        self.ce += parts["ce"] * n
        self.dice += parts["dice"] * n
        self.rois += n
        self.steps += 1

    def tensor(self) -> torch.Tensor:
        return torch.tensor([self.loss, self.ce, self.dice, self.rois, self.steps], dtype=torch.float64)


@dataclass
class Trainer:
    """Everything a run needs, built by :meth:`build`; :meth:`fit` runs the epochs."""

    cfg: TrainConfig
    ctx: DistContext
    extractor: OnnxFeatureExtractor
    cache: FeatureCache
    train_set: CocoPersonImages
    val_set: CocoPersonImages
    head: RoiMaskHead
    model: nn.Module
    loss_fn: SegLoss
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    train_sampler: ShardSampler
    train_loader: DataLoader
    val_loader: DataLoader
    out: Path
    start_epoch: int = 1
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "miou": -1.0, "file": None})
    picture_indices: list[int] = field(default_factory=list)

    # ---------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.head.cfg.input_hw

    @property
    def amp_enabled(self) -> bool:
        return self.device.type == "cuda" and self.cfg.optim.amp

    @property
    def amp_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.optim.amp_dtype == "bfloat16" else torch.float16

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype, enabled=self.amp_enabled)

    # ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, cfg: TrainConfig, ctx: DistContext, resume: Path | None = None) -> "Trainer":
        """Extractor, cache, datasets, head, loss, optimizer, schedule; restored from ``resume`` when given."""
        out = Path(cfg.train.out)
        if ctx.is_main:
            ensure_writable_dir(out)
        state = load_checkpoint(resume, map_location="cpu") if resume is not None else None

        extractor = OnnxFeatureExtractor(cfg.features.extractor, cfg.features.tensor, device=str(ctx.device))
        info = extractor.info
        if state is not None:
            check_compatible(state, info, resume)
        cache = FeatureCache(extractor, cfg.features.cache_dir)
        d = cfg.data
        train_set = CocoPersonImages(d.train_annotations, d.train_image_dir, info.input_hw, extractor.preprocessing,
                                     jitter=d.jitter, seed=cfg.train.seed, max_images=d.max_train_images or None)
        val_set = CocoPersonImages(d.val_annotations, d.val_image_dir, info.input_hw, extractor.preprocessing,
                                   jitter=0.0, seed=cfg.train.seed, max_images=d.max_val_images or None)
        LOG.info("train: %d images, %d ROIs (%s); val: %d images, %d ROIs (%s)", len(train_set), train_set.num_rois,
                 d.train_annotations, len(val_set), val_set.num_rois, d.val_annotations)

        if not cfg.loss.class_weights:
            weights = resolve_class_weights(d.analyze_json, train_set) if ctx.is_main else None
            cfg.loss.class_weights = list(broadcast_object(weights, ctx))  # stored with the config: resume reuses them
        loss_fn = SegLoss(cfg.loss_config(None)).to(ctx.device)

        seed_everything(cfg.train.seed)
        head_cfg = cfg.head.head_config(info.channels, info.stride, info.input_hw)
        head = build_head(head_cfg).to(ctx.device)
        if state is not None:
            _check_head_config(state, head_cfg, resume)
            head.load_state_dict(state["model"])
        LOG.info("head %s: %.2fM parameters, input %dx%d, %d-channel features at stride %d", head_cfg.variant,
                 count_parameters(head) / 1e6, *info.input_hw, info.channels, info.stride)
        model = wrap_model(head, ctx)

        sampler = ShardSampler(len(train_set), ctx.rank, ctx.world_size, shuffle=True, seed=cfg.train.seed, pad=True)
        val_sampler = ShardSampler(len(val_set), ctx.rank, ctx.world_size, shuffle=False, pad=False)
        pin = ctx.device.type == "cuda"
        train_loader = DataLoader(train_set, batch_size=d.batch_size, sampler=sampler, collate_fn=collate_images,
                                  num_workers=d.num_workers, pin_memory=pin)
        val_loader = DataLoader(val_set, batch_size=d.batch_size, sampler=val_sampler, collate_fn=collate_images,
                                num_workers=d.num_workers, pin_memory=pin)

        o = cfg.optim
        optimizer = torch.optim.AdamW(param_groups(head, o.weight_decay), lr=o.lr, betas=tuple(o.betas))
        steps = len(train_loader)
        total = steps * cfg.train.epochs
        warmup = min(int(round(o.warmup_epochs * steps)), total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, warmup, total, o.warmup_start_factor, o.min_lr_ratio))
        use_scaler = ctx.device.type == "cuda" and o.amp and o.amp_dtype == "float16"
        scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        LOG.info("%d step(s) per epoch x %d epochs (warm-up %d steps), %d rank(s), device %s, AMP %s, cache %s",
                 steps, cfg.train.epochs, warmup, ctx.world_size, ctx.device,
                 o.amp_dtype if ctx.device.type == "cuda" and o.amp else "off", cfg.features.cache_dir or "off")

        trainer = cls(cfg=cfg, ctx=ctx, extractor=extractor, cache=cache, train_set=train_set, val_set=val_set,
                      head=head, model=model, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                      train_sampler=sampler, train_loader=train_loader, val_loader=val_loader, out=out)
        if cfg.train.picture and ctx.is_main:
            trainer.picture_indices = select_validation_images(val_set, d.validation_images)
        if state is not None:
            trainer._restore(state, resume)
        return trainer

    def _restore(self, state: dict[str, Any], source: Path) -> None:
        """Optimizer, scheduler, scaler, RNG, best record and start epoch from a checkpoint."""
        for key in ("optimizer", "scheduler", "rng"):
            if key not in state:
                raise InputError(f"checkpoint {source} has no {key} state; it cannot be resumed (only exported)")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"checkpoint {source}: optimizer/scheduler state does not fit this head: {exc}") from exc
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best = dict(state.get("best") or self.best)
        LOG.info("resumed from %s: epoch %d done, continuing at epoch %d", source, state["epoch"], self.start_epoch)
        if self.ctx.is_main:  # metrics.jsonl: keep the epochs up to the resumed one (a later run may have left more)
            path = self.out / METRICS_FILE
            kept = [r for r in (read_metrics(path) if path.is_file() else []) if r["epoch"] < int(state["epoch"])]
            record = state.get("metrics") or {}
            write_metrics(path, kept + ([record] if record.get("epoch") == state["epoch"] else []))

    # ---------------------------------------------------------------------------------------
    def features(self, batch: ImageBatch) -> torch.Tensor:
        """[B, C, h, w] features of a batch on the training device (cache first, extractor on misses)."""
        return self.cache.features(batch.paths, batch.images).to(self.device, non_blocking=True)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over this rank's shard; returns the epoch's train record (summed over ranks)."""
        self.model.train()
        self.train_sampler.set_epoch(epoch)
        self.train_set.set_epoch(epoch)
        cap = self.cfg.data.max_rois_per_step
        stats = EpochStats()
        clip = self.cfg.optim.grad_clip
        start = time.perf_counter()
        bar = progress(self.train_loader, desc=f"epoch {epoch}/{self.cfg.train.epochs}", total=len(self.train_loader),
                       unit="step", disable=not self.ctx.is_main)
        for step, batch in enumerate(bar):
            batch = batch.to(self.device)
            feats = self.features(batch)
            pick = sample_rois(len(batch.rois), cap, step_seed(self.cfg.train.seed, epoch, step, self.ctx.rank))
            rois, batch_idx, targets = batch.rois, batch.batch_idx, batch.targets
            if pick is not None:
                pick = pick.to(self.device)
                rois, batch_idx, targets = rois[pick], batch_idx[pick], targets[pick]
            inside = roi_inside_masks(rois, self.input_hw)
            with self.autocast():
                logits = paste_roi_logits(self.model(feats, rois, batch_idx, batch.images), rois, self.input_hw)
                loss, parts = self.loss_fn(logits, targets, inside)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.head.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            stats.add(parts, len(rois))
            elapsed = time.perf_counter() - start
            if self.ctx.is_main:
                bar.set_postfix(loss=f"{stats.loss / stats.rois:.4f}", rois_s=f"{stats.rois / elapsed:.1f}",
                                lr=f"{self.scheduler.get_last_lr()[0]:.2e}", refresh=False)
        elapsed = time.perf_counter() - start
        totals = all_reduce_sum(stats.tensor(), self.ctx).tolist()
        rois = max(totals[3], 1.0)
        return {"train_loss": totals[0] / rois, "train_ce": totals[1] / rois, "train_dice": totals[2] / rois,
                "train_rois": int(totals[3]), "train_steps": int(stats.steps), "rois_per_s": totals[3] / max(elapsed, 1e-9),
                "train_time_s": elapsed, "lr": float(self.scheduler.get_last_lr()[0])}

    @torch.no_grad()
    def validate(self, epoch: int | None = None) -> dict[str, Any]:
        """Metrics of the head on the whole val set (all ranks' shards summed) plus ``val_loss``."""
        head = self.head.eval()
        metrics = SegMetrics()
        loss_sum = torch.zeros(2, dtype=torch.float64)
        cap = self.cfg.data.max_rois_per_step
        start = time.perf_counter()
        desc = "validate" if epoch is None else f"validate {epoch}"
        for batch in progress(self.val_loader, desc=desc, total=len(self.val_loader), unit="batch",
                              disable=not self.ctx.is_main):
            batch = batch.to(self.device)
            feats = self.features(batch)
            for lo in range(0, len(batch.rois), cap):
                sl = slice(lo, lo + cap)
                rois, targets = batch.rois[sl], batch.targets[sl]
                inside = roi_inside_masks(rois, self.input_hw)
                with self.autocast():
                    logits = head.full_logits(feats, rois, batch.batch_idx[sl], batch.images)
                    loss, _ = self.loss_fn(logits, targets, inside)
                pred = masks_from_logits(logits.float(), inside).argmax(dim=1)
                metrics.update(pred, targets, batch.areas[sl], inside)
                loss_sum += torch.tensor([float(loss) * len(rois), len(rois)], dtype=torch.float64)
        metrics.load_state(all_reduce_sum(metrics.state(), self.ctx))
        loss_sum = all_reduce_sum(loss_sum, self.ctx)
        result = metrics.compute()
        result["val_loss"] = float(loss_sum[0] / max(float(loss_sum[1]), 1.0))
        result["val_time_s"] = time.perf_counter() - start
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
            feats = self.cache.features([item.path], image).to(self.device)
            rois = item.rois.to(self.device)
            with self.autocast():
                probs = head.predict_masks(feats, rois, torch.zeros(len(rois), dtype=torch.int64, device=self.device), image)
            pred_masks.append(predictions_to_original(probs.float(), item.orig_hw))
        return render_validation_picture(self.val_set, self.picture_indices, pred_masks,
                                         self.out / validation_picture_name(epoch))

    # ---------------------------------------------------------------------------------------
    def checkpoint_state(self, epoch: int, record: dict[str, Any]) -> dict[str, Any]:
        """What a checkpoint of ``epoch`` holds (see :mod:`roiseg.training.checkpoint`)."""
        return {
            "epoch": epoch,
            "head_config": self.head.cfg.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
            "extractor": self.extractor.info.to_dict(),
            "metrics": record,
            "config": self.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "rng": rng_state(),
            "best": dict(self.best),
        }

    def save_epoch(self, epoch: int, record: dict[str, Any]) -> Path:
        """Rank 0: checkpoint, ``best.pth``, pruning, ``metrics.jsonl`` and ``curves.png`` of an epoch."""
        miou = record.get("miou") or 0.0
        path = self.out / checkpoint_name(epoch, self.input_hw, miou)
        record["checkpoint"] = path.name
        is_best = miou > self.best["miou"]
        if is_best:
            self.best = {"epoch": epoch, "miou": miou, "file": path.name}
        save_checkpoint(path, self.checkpoint_state(epoch, record))
        if is_best:
            record_best(path)
        for old in prune_checkpoints(self.out, self.cfg.train.keep):
            LOG.info("pruned %s (keep %d)", old.name, self.cfg.train.keep)
        metrics_path = self.out / METRICS_FILE
        records = [r for r in (read_metrics(metrics_path) if metrics_path.is_file() else []) if r["epoch"] < epoch]
        write_metrics(metrics_path, records + [record])
        plot_curves(metrics_path, self.out / CURVES_FILE)
        return path

    def fit(self) -> dict[str, Any]:
        """Run epochs ``start_epoch .. train.epochs`` (or until ``train.stop_after``); returns a summary."""
        cfg = self.cfg
        history: list[dict[str, Any]] = []
        last = self.start_epoch - 1
        if self.start_epoch > cfg.train.epochs:
            LOG.info("nothing to do: epoch %d of %d already done (raise --epochs to continue)", last, cfg.train.epochs)
        for epoch in range(self.start_epoch, cfg.train.epochs + 1):
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
                if cfg.train.picture:
                    self.draw_validation_picture(epoch)
                LOG.info("epoch %d: loss %.4f, mIoU %s, mean ROI target IoU %s (box baseline %s) -> %s", epoch,
                         record["train_loss"], _fmt(record.get("miou")), _fmt(record.get("mean_roi_target_iou")),
                         _fmt(record.get("box_baseline_roi_target_iou")), path.name)
            barrier(self.ctx)
            history.append(record)
            last = epoch
            if cfg.train.stop_after and epoch >= cfg.train.stop_after:
                LOG.info("stopping after epoch %d (train.stop_after); continue with --resume", epoch)
                break
        return {"out": str(self.out), "rank": self.ctx.rank, "last_epoch": last, "epochs": cfg.train.epochs, "best": dict(self.best),
                "history": history}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _check_head_config(state: dict[str, Any], head_cfg: HeadConfig, source: Path | None) -> None:
    saved = state.get("head_config") or {}
    now = head_cfg.to_dict()
    diff = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v]
    if diff:
        raise InputError(f"checkpoint {source}: head differs from the configured one ({'; '.join(diff)})")


def train(cfg: TrainConfig, resume: Path | None = None) -> dict[str, Any]:
    """Train with ``cfg`` (joining the torchrun process group when launched by torchrun); returns the summary."""
    ctx = init_distributed(cfg.train.device)
    try:
        return Trainer.build(cfg, ctx, resume).fit()
    finally:
        cleanup(ctx)


def format_summary(summary: dict[str, Any]) -> Iterable[str]:
    """Human-readable lines for the CLI."""
    best = summary["best"]
    yield f"run folder: {summary['out']} (epoch {summary['last_epoch']} of {summary['epochs']} done)"
    for r in summary["history"]:
        yield (f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, val loss {r['val_loss']:.4f}, mIoU {_fmt(r.get('miou'))}, "
               f"mean ROI target IoU {_fmt(r.get('mean_roi_target_iou'))} (box baseline "
               f"{_fmt(r.get('box_baseline_roi_target_iou'))}), {r['rois_per_s']:.1f} ROIs/s, {r['epoch_time_s']:.1f} s")
    if best.get("file"):
        yield f"best: epoch {best['epoch']}, mIoU {best['miou']:.4f} ({best['file']}, copied to best.pth)"


__all__ = [
    "EpochStats", "Trainer", "format_summary", "lr_factor", "resolve_run_config", "rng_state", "sample_rois",
    "seed_everything", "set_rng_state", "step_seed", "train",
]
