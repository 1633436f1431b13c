"""Building the parts of a run from its config: extractor, datasets, loss, loaders, step set-up."""

from __future__ import annotations

from torch.utils.data import DataLoader

from roiseg.data.dataset import CocoPersonImages, collate_images
from roiseg.features.extractor import OnnxFeatureExtractor
from roiseg.modeling import MaskHead
from roiseg.training.config import TrainConfig
from roiseg.training.distributed import DistContext, ShardSampler, broadcast_object, wrap_model
from roiseg.training.loss import SegLoss, resolve_class_weights
from roiseg.training.optim import amp_dtype, amp_enabled, build_optimizer, build_scaler, build_scheduler
from roiseg.training.step import StepSetup
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

TAP_VARIANTS: tuple[str, ...] = ("query",)
"""Head variants that read the extra taps of ``features.extra_tensors``."""


def build_extractor(cfg: TrainConfig, ctx: DistContext) -> OnnxFeatureExtractor:
    """The extractor of the run; with the extra taps of ``features.extra_tensors`` when the head reads them."""
    extras = cfg.features.extra_tensors if cfg.head.variant in TAP_VARIANTS else ()
    return OnnxFeatureExtractor(cfg.features.extractor, cfg.features.feature_tensor, device=str(ctx.device),
                                preprocessing=cfg.features.preprocessing, extra_tensors=extras)


def build_datasets(cfg: TrainConfig, extractor: OnnxFeatureExtractor) -> tuple[CocoPersonImages, CocoPersonImages]:
    """The train set (with ROI jitter) and the val set at the extractor's input size."""
    d, hw = cfg.data, extractor.info.input_hw
    train_set = CocoPersonImages(d.train_annotations, d.train_image_dir, hw, extractor.preprocessing,
                                 jitter=d.jitter, seed=cfg.train.seed, max_images=d.max_train_images or None,
                                 hflip=d.hflip, roi_copies=d.roi_copies, zoom=d.zoom)
    val_set = CocoPersonImages(d.val_annotations, d.val_image_dir, hw, extractor.preprocessing,
                               jitter=0.0, seed=cfg.train.seed, max_images=d.max_val_images or None)
    LOG.info("train: %d images, %d ROIs (%s); val: %d images, %d ROIs (%s)", len(train_set), train_set.num_rois,
             d.train_annotations, len(val_set), val_set.num_rois, d.val_annotations)
    return train_set, val_set


def build_loss(cfg: TrainConfig, ctx: DistContext, train_set: CocoPersonImages) -> SegLoss:
    """The loss; class weights resolved on rank 0 and stored in ``cfg`` (so a resumed run reuses them)."""
    if not cfg.loss.class_weights:
        weights = resolve_class_weights(cfg.data.analyze_json, train_set) if ctx.is_main else None
        cfg.loss.class_weights = list(broadcast_object(weights, ctx))
    return SegLoss(cfg.loss_config(None)).to(ctx.device)


def build_loaders(cfg: TrainConfig, ctx: DistContext, train_set: CocoPersonImages,
                  val_set: CocoPersonImages) -> tuple[ShardSampler, DataLoader, DataLoader]:
    """This rank's train sampler (shuffled, padded) and the train and val loaders (val unpadded)."""
    d = cfg.data
    repeats = [d.crowded_repeat if c else 1 for c in train_set.crowded()] if d.crowded_repeat > 1 else []
    if repeats:
        LOG.info("train draw: %d of %d images crowded (overlapping person boxes), each entered %d times into the epoch's "
                 "pool of %d, which keeps %d", sum(r > 1 for r in repeats), len(repeats), d.crowded_repeat, sum(repeats),
                 len(repeats))
    sampler = ShardSampler(len(train_set), ctx.rank, ctx.world_size, shuffle=True, seed=cfg.train.seed, pad=True,
                           repeats=repeats)
    val_sampler = ShardSampler(len(val_set), ctx.rank, ctx.world_size, shuffle=False, pad=False)
    pin = ctx.device.type == "cuda"
    train_loader = DataLoader(train_set, batch_size=d.batch_size, sampler=sampler, collate_fn=collate_images,
                              num_workers=d.num_workers, pin_memory=pin)
    val_loader = DataLoader(val_set, batch_size=d.batch_size, sampler=val_sampler, collate_fn=collate_images,
                            num_workers=d.num_workers, pin_memory=pin)
    return sampler, train_loader, val_loader


def build_step_setup(cfg: TrainConfig, ctx: DistContext, head: MaskHead, loss_fn: SegLoss,
                     steps_per_epoch: int) -> StepSetup:
    """Model (DDP-wrapped when distributed), AdamW, the per-step schedule and the scaler of a run."""
    o, device = cfg.optim, ctx.device
    optimizer = build_optimizer(head, o)
    scheduler, warmup = build_scheduler(optimizer, o, steps_per_epoch, cfg.train.epochs)
    LOG.info("%d step(s) per epoch x %d epochs (warm-up %d steps), %d rank(s), device %s, AMP %s, cache %s",
             steps_per_epoch, cfg.train.epochs, warmup, ctx.world_size, device,
             o.amp_dtype if amp_enabled(device, o) else "off", cfg.features.cache_dir or "off")
    return StepSetup(model=wrap_model(head, ctx), loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler,
                     scaler=build_scaler(device, o), input_hw=head.cfg.input_hw, grad_clip=o.grad_clip,
                     max_rois=cfg.data.max_rois_per_step, points=cfg.loss.points, oversample=cfg.loss.oversample,
                     importance=cfg.loss.importance,
                     person_weight=cfg.loss.person_weight if head.cfg.has_person_map else 0.0,
                     device_type=device.type, amp=amp_enabled(device, o),
                     amp_dtype=amp_dtype(o))


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------
