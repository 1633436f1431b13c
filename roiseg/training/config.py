"""The training configuration: one dataclass per TOML section, loaded from a file plus overrides.

``configs/default.toml`` lists every key with its default (a test keeps the two equal). Values
are resolved in this order, later wins:

1. the dataclass defaults below;
2. the TOML file (``--config``); every key is optional, an unknown section or key is an error;
3. overrides, ``{"section.key": value}`` (what the command line gives).

Sections: ``[data]`` paths and batching, ``[features]`` extractor and cache, ``[head]`` the head
hyper-parameters (:class:`roiseg.modeling.HeadConfig` minus what the extractor fixes), ``[loss]``
(:class:`roiseg.training.loss.LossConfig`), ``[optim]`` AdamW and the schedule, ``[train]`` the run.

Fields that have a command-line flag say so in their metadata (:func:`roiseg.utils.overrides.flag`);
``roiseg train`` builds its options from them. The key ``features.tensor`` of older configs and
checkpoints is read as ``features.feature_tensor`` (:data:`LEGACY_KEYS`).

Units: ``optim.lr`` is the peak learning rate reached after the warm-up; ``warmup_epochs`` may be
fractional; ``data.batch_size`` counts *images* per step, ``data.max_rois_per_step`` ROIs.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from roiseg.conventions import (
    DEFAULT_ANALYZE_JSON,
    DEFAULT_CHECKPOINT_DIR,
    DEFAULT_DATA_ROOT,
    DEFAULT_EXTRACTOR,
    DEFAULT_FEATURE_TENSOR,
    DEFAULT_PREPROCESSING,
    DEFAULT_TRAIN_ANN,
    DEFAULT_TRAIN_IMAGES,
    DEFAULT_VAL_ANN,
    DEFAULT_VAL_IMAGES,
    DEFAULT_VALIDATION_IMAGES,
    Preprocessing,
)
from roiseg.errors import InputError
from roiseg.features.cache import parse_cache_dir
from roiseg.modeling import HeadConfig
from roiseg.training.loss import LossConfig
from roiseg.utils.overrides import apply_overrides, flag, flatten, parse_set, read_toml, to_dict

DEFAULT_FEATURE_CACHE = ".cache/features"
LEGACY_KEYS: dict[str, str] = {"features.tensor": "features.feature_tensor"}
"""Old dotted keys -> current ones, accepted in TOML files, overrides and checkpoints' stored configs."""


def _below_root(default: str) -> str:
    """A seed-layout default path relative to the data root (``data/annotations/x`` -> ``annotations/x``)."""
    return str(Path(default).relative_to(DEFAULT_DATA_ROOT))


def _opt(default: Any, name: str, help: str, metavar: str | None = None) -> Any:
    """A field with ``default`` and the command-line flag ``name``."""
    return field(default=default, metadata=flag(name, help, metavar))


@dataclass
class DataConfig:
    """Where the data is and how it is batched. Empty paths resolve inside ``root`` (seed layout)."""

    root: str = _opt(DEFAULT_DATA_ROOT, "--data-root", "data folder in the seed layout (default data)")
    train_ann: str = _opt("", "--train-ann", "person-only train JSON (default "
                          "<data-root>/annotations/instances_train2017_person_only_no_crowd.json)")
    """Person-only train JSON; ``""`` -> ``<root>/annotations/instances_train2017_person_only_no_crowd.json``."""
    val_ann: str = _opt("", "--val-ann", "person-only val JSON (default "
                        "<data-root>/annotations/instances_val2017_person_only_no_crowd.json)")
    train_images: str = _opt("", "--train-images", "train image folder (default <data-root>/images/train2017)")
    """Train image folder; ``""`` -> ``<root>/images/train2017``."""
    val_images: str = _opt("", "--val-images", "val image folder (default <data-root>/images/val2017)")
    analyze_json: str = _opt(DEFAULT_ANALYZE_JSON, "--analyze-json",
                             "data_analyze.json with the loss class weights (computed when absent)")
    """``data_analyze.json`` with the loss class weights; when absent they are computed from the train set."""
    max_train_images: int = _opt(0, "--max-train-images", "use the first N train images (0 = all)")
    """Use only the first N train images (0 = all)."""
    max_val_images: int = _opt(0, "--max-val-images", "use the first N val images (0 = all)")
    jitter: float = 0.05
    """ROI jitter of the train set (fraction of the box size), re-drawn each epoch."""
    hflip: float = 0.5
    """Probability that a train image is mirrored horizontally (image, masks and ROIs; its features
    are computed on the mirrored image and cached as a second entry), re-drawn each epoch."""
    zoom: float = 0.0
    """Scale augmentation: half the train items are seen through a window zoomed by a factor drawn
    log-uniformly in ``[1 / (1 + zoom), 1 + zoom]`` (``roiseg.data.zoom``; their features are extracted
    each time, not cached); 0 = off."""
    crowded_repeat: int = 3
    """Images whose person boxes overlap enter each epoch's draw this many times, the others once; the epoch keeps
    its length (1 = every image once per epoch; 3 measured in docs/heads.md)."""
    roi_copies: int = 1
    """ROIs per person in a train item, each with its own jitter draw (1 = one per person)."""
    batch_size: int = _opt(4, "--batch-size", "images per step")
    """Images per step (all their ROIs go into the step, up to ``max_rois_per_step``)."""
    max_rois_per_step: int = _opt(32, "--max-rois-per-step", "cap on ROIs per step")
    """Cap on ROIs per step (memory: each ROI's logits are [3, H, W]); sampled deterministically above it."""
    num_workers: int = _opt(2, "--num-workers", "DataLoader worker processes")
    """DataLoader worker processes (0 = load in the main process)."""
    validation_images: list[str] = field(default_factory=lambda: list(DEFAULT_VALIDATION_IMAGES))
    """Val file names drawn in the per-epoch validation picture (missing ones: the first with persons)."""

    def path(self, value: str, default: str) -> Path:
        return Path(value) if value else Path(self.root) / _below_root(default)

    @property
    def train_annotations(self) -> Path:
        return self.path(self.train_ann, DEFAULT_TRAIN_ANN)

    @property
    def val_annotations(self) -> Path:
        return self.path(self.val_ann, DEFAULT_VAL_ANN)

    @property
    def train_image_dir(self) -> Path:
        return self.path(self.train_images, DEFAULT_TRAIN_IMAGES)

    @property
    def val_image_dir(self) -> Path:
        return self.path(self.val_images, DEFAULT_VAL_IMAGES)


@dataclass
class FeaturesConfig:
    """The frozen detector the features come from, and the feature cache."""

    extractor: str = _opt(DEFAULT_EXTRACTOR, "--extractor", "detector ONNX the features are read from")
    feature_tensor: str = _opt(DEFAULT_FEATURE_TENSOR, "--feature-tensor",
                               f"feature tensor name (default {DEFAULT_FEATURE_TENSOR})")
    """The tensor the head reads (its shape gives channels and stride); ``tensor`` in older configs."""
    extra_tensors: str | list[str] = "auto"
    """Extra taps read in the same detector run by the heads that use them (``query``): tensor names,
    or ``"auto"`` (the tensors feeding the primary at strides 4 and 16, :mod:`roiseg.features.taps`)."""
    cache: str = _opt(DEFAULT_FEATURE_CACHE, "--cache", "feature-cache folder, or none to extract every epoch",
                      metavar="DIR|none")
    """Feature-cache folder (fp16 per image), or ``"none"`` to extract on the fly every epoch."""
    color: str = DEFAULT_PREPROCESSING.color
    """Channel order the detector expects: ``"rgb"`` (YOLOv5-v11 exports) or ``"bgr"`` (YOLOX)."""
    scale: float = DEFAULT_PREPROCESSING.scale
    """Pixel scale the detector expects: ``1/255`` (values in [0, 1]) or ``1.0`` (0..255, YOLOX)."""

    @property
    def preprocessing(self) -> Preprocessing:
        """How images become the detector's input (stored with the checkpoint and the fused model)."""
        return Preprocessing(color=self.color, scale=self.scale)

    @property
    def cache_dir(self) -> Path | None:
        """The cache folder, or ``None`` for on-the-fly extraction (``cache = "none"``)."""
        return parse_cache_dir(self.cache)


EXTRACTOR_FIXED: tuple[str, ...] = HeadConfig.EXTRACTOR_FIELDS
""":class:`HeadConfig` fields the extractor determines; every other field is a ``[head]`` key."""
HEAD_FLAGS: dict[str, dict[str, Any]] = {"variant": flag("--variant", "head variant")}


def _head_section() -> type:
    """``HeadSection``: the fields of :class:`HeadConfig` minus :data:`EXTRACTOR_FIXED`, with their defaults."""
    hints = typing.get_type_hints(HeadConfig)
    specs = []
    for f in dataclasses.fields(HeadConfig):
        if f.name in EXTRACTOR_FIXED:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"HeadConfig.{f.name} needs a default to be a [head] config key")
        default = {"default": f.default} if f.default is not dataclasses.MISSING else {"default_factory": f.default_factory}
        specs.append((f.name, hints[f.name], field(**default, metadata=HEAD_FLAGS.get(f.name, {}))))

    def head_config(self, in_channels: int, stride: int, input_hw: tuple[int, int],
                    extra_channels: tuple[int, ...] = (), extra_strides: tuple[int, ...] = ()) -> HeadConfig:
        """The full :class:`HeadConfig`: these keys plus what the extractor fixes."""
        return HeadConfig(in_channels=in_channels, stride=stride, input_hw=tuple(input_hw),
                          extra_channels=tuple(extra_channels), extra_strides=tuple(extra_strides),
                          **dataclasses.asdict(self))

    doc = ":class:`roiseg.modeling.HeadConfig` fields the user chooses (channels/stride/input come from the extractor)."
    cls = dataclasses.make_dataclass("HeadSection", specs, namespace={"head_config": head_config, "__doc__": doc})
    cls.__module__ = __name__
    return cls


HeadSection = _head_section()


@dataclass
class OptimConfig:
    """AdamW with a per-step schedule: linear warm-up to ``lr``, then cosine down to ``lr * min_lr_ratio``."""

    lr: float = _opt(3e-3, "--lr", "peak learning rate")
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_epochs: float = 1.0
    warmup_start_factor: float = 0.01
    """Learning rate at step 0 as a fraction of ``lr``."""
    min_lr_ratio: float = 0.01
    grad_clip: float = 1.0
    """Max global gradient norm (0 = no clipping)."""
    amp: bool = True
    """Mixed precision (torch.autocast + GradScaler); used only when training runs on CUDA."""
    amp_dtype: str = "float16"
    """``float16`` (with loss scaling) or ``bfloat16``."""


@dataclass
class RunConfig:
    """The run: length, seed, device, output folder, checkpoint retention."""

    epochs: int = _opt(3, "--epochs", "number of epochs (the schedule spans them)")
    seed: int = _opt(0, "--seed", "seed of initialisation, data order and ROI sampling")
    device: str = _opt("auto", "--device", "auto, cpu, cuda or cuda:N")
    """``auto`` (CUDA when usable), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun each rank uses ``cuda:LOCAL_RANK``."""
    out: str = _opt(DEFAULT_CHECKPOINT_DIR, "--out",
                    "run folder for checkpoints, metrics.jsonl, curves.png, pictures (default checkpoints)")
    """Run folder: checkpoints, ``best.pth``, ``metrics.jsonl``, ``curves.png``, validation pictures."""
    keep: int = _opt(0, "--keep", "keep the newest N epoch checkpoints (0 = all); best.pth is kept")
    """Keep only the newest N epoch checkpoints (0 = keep all); ``best.pth`` is always kept."""
    stop_after: int = _opt(0, "--stop-after", "stop after this epoch without shortening the schedule")
    """Stop after this epoch although the schedule spans ``epochs`` (0 = run all); continue by resuming."""
    picture: bool = True
    """Draw ``validation_all_images_epoch_NNNN.png`` each epoch."""


@dataclass
class TrainConfig:
    """Every training option, grouped by TOML section."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    head: HeadSection = field(default_factory=HeadSection)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (lists, no tuples, no ``None``): stored in checkpoints, TOML-compatible."""
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Inverse of :meth:`to_dict`; missing keys keep their defaults, unknown ones are an InputError."""
        return _apply(cls(), flatten(d, source), source)

    def validate(self) -> "TrainConfig":
        """Check value ranges; InputError naming ``section.key``. Returns ``self``."""
        _check_ranges(self)
        return self

    def loss_config(self, class_weights: Sequence[float] | None) -> LossConfig:
        """The loss section with the class weights resolved (explicit ones win)."""
        weights = list(self.loss.class_weights) if self.loss.class_weights else class_weights
        return dataclasses.replace(self.loss, class_weights=None if weights is None else list(weights))


def _apply(cfg: TrainConfig, items: Mapping[str, Any], source: str) -> TrainConfig:
    """The one place where overrides meet the schema (and legacy keys are renamed)."""
    return apply_overrides(cfg, items, source, aliases=LEGACY_KEYS)


def load_config(
    toml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults <- ``base`` (e.g. a checkpoint's config) <- TOML file <- overrides; validated.

    ``overrides``: ``{"section.key": value}`` or ``["section.key=value", ...]`` (values parsed as
    TOML, e.g. ``optim.lr=3e-4``, ``loss.dice_classes=[1,2]``; a bare word is a string).
    """
    cfg = TrainConfig()
    if base is not None:
        _apply(cfg, flatten(base, "checkpoint config"), "checkpoint config")
    if toml_path is not None:
        _apply(cfg, flatten(read_toml(toml_path), str(toml_path)), str(toml_path))
    if overrides:
        items = parse_set(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
        _apply(cfg, items, "override")
    return cfg.validate()


def _check_ranges(cfg: TrainConfig) -> None:
    head = cfg.head.head_config(1, 8, (64, 64))  # the head these keys build (geometry aside)
    checks: list[tuple[str, bool, Any]] = [
        ("data.batch_size", cfg.data.batch_size >= 1, ">= 1"),
        ("data.max_rois_per_step", cfg.data.max_rois_per_step >= 1, ">= 1"),
        ("data.num_workers", cfg.data.num_workers >= 0, ">= 0"),
        ("data.max_train_images", cfg.data.max_train_images >= 0, ">= 0"),
        ("data.max_val_images", cfg.data.max_val_images >= 0, ">= 0"),
        ("data.jitter", 0.0 <= cfg.data.jitter < 1.0, "in [0, 1)"),
        ("data.zoom", 0.0 <= cfg.data.zoom <= 3.0, "in [0, 3]"),
        ("data.crowded_repeat", cfg.data.crowded_repeat >= 1, ">= 1"),
        ("data.hflip", 0.0 <= cfg.data.hflip <= 1.0, "in [0, 1]"),
        ("data.roi_copies", cfg.data.roi_copies >= 1, ">= 1"),
        ("data.roi_copies", cfg.data.roi_copies == 1 or not head.has_neighbour_map,
         "1 while head.neighbour_map is on (a person's copies would be its own neighbours)"),
        ("loss.person_weight", cfg.loss.person_weight > 0 or not head.has_person_map,
         "> 0 while head.person_aux is on (set head.person_aux=false to train without the person map)"),
        ("features.color", cfg.features.color in ("rgb", "bgr"), "'rgb' or 'bgr'"),
        ("features.scale", cfg.features.scale > 0, "> 0"),
        ("optim.lr", cfg.optim.lr > 0, "> 0"),
        ("optim.weight_decay", cfg.optim.weight_decay >= 0, ">= 0"),
        ("optim.betas", len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas), "two numbers in [0, 1)"),
        ("optim.warmup_epochs", cfg.optim.warmup_epochs >= 0, ">= 0"),
        ("optim.warmup_start_factor", 0 < cfg.optim.warmup_start_factor <= 1, "in (0, 1]"),
        ("optim.min_lr_ratio", 0 <= cfg.optim.min_lr_ratio <= 1, "in [0, 1]"),
        ("optim.grad_clip", cfg.optim.grad_clip >= 0, ">= 0"),
        ("optim.amp_dtype", cfg.optim.amp_dtype in ("float16", "bfloat16"), "'float16' or 'bfloat16'"),
        ("train.epochs", cfg.train.epochs >= 1, ">= 1"),
        ("train.keep", cfg.train.keep >= 0, ">= 0"),
        ("train.stop_after", cfg.train.stop_after >= 0, ">= 0"),
    ]
    for key, ok, expected in checks:
        if not ok:
            section, name = key.split(".")
            raise InputError(f"config {key} must be {expected}, got {getattr(getattr(cfg, section), name)!r}")
    try:
        cfg.loss.validate()
    except ValueError as exc:
        raise InputError(f"config [loss]: {exc}") from exc
    try:
        head.validate()
    except ValueError as exc:
        raise InputError(f"config [head]: {exc}") from exc


__all__ = [
    "EXTRACTOR_FIXED", "LEGACY_KEYS", "DataConfig", "FeaturesConfig", "HeadSection",
    "OptimConfig", "RunConfig", "TrainConfig", "load_config",
]
