"""The training configuration: one dataclass per TOML section, loaded from a file plus overrides.

``configs/default.toml`` lists every key with its default (a test keeps the two equal). Values
are resolved in this order, later wins:

1. the dataclass defaults below;
2. the TOML file (``--config``); every key is optional, an unknown section or key is an error;
3. overrides, ``{"section.key": value}`` (what the CLI flags and ``--set section.key=value`` give).

Sections: ``[data]`` paths and batching, ``[features]`` extractor and cache, ``[head]`` the head
hyper-parameters (:class:`roiseg.modeling.HeadConfig` minus what the extractor fixes), ``[loss]``
(:class:`roiseg.training.loss.LossConfig`), ``[optim]`` AdamW and the schedule, ``[train]`` the run.

Units: ``optim.lr`` is the peak learning rate reached after the warm-up; ``warmup_epochs`` may be
fractional; ``data.batch_size`` counts *images* per step, ``data.max_rois_per_step`` ROIs.
"""

from __future__ import annotations

import dataclasses
import sys
import types
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
    DEFAULT_TRAIN_ANN,
    DEFAULT_TRAIN_IMAGES,
    DEFAULT_VAL_ANN,
    DEFAULT_VAL_IMAGES,
    DEFAULT_VALIDATION_IMAGES,
)
from roiseg.errors import InputError
from roiseg.features.cache import CACHE_DISABLED, parse_cache_dir
from roiseg.modeling import HeadConfig
from roiseg.training.loss import LossConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "default.toml"
"""``configs/default.toml`` of the source tree (absent in an installed wheel; defaults still apply)."""
DEFAULT_FEATURE_CACHE = ".cache/features"


def _head_default(name: str) -> Any:
    """Default of a :class:`HeadConfig` field, so the two never drift apart."""
    return HeadConfig.__dataclass_fields__[name].default


def _below_root(default: str) -> str:
    """A seed-layout default path relative to the data root (``data/annotations/x`` -> ``annotations/x``)."""
    return str(Path(default).relative_to(DEFAULT_DATA_ROOT))


@dataclass
class DataConfig:
    """Where the data is and how it is batched. Empty paths resolve inside ``root`` (seed layout)."""

    root: str = DEFAULT_DATA_ROOT
    train_ann: str = ""
    """Person-only train JSON; ``""`` -> ``<root>/annotations/instances_train2017_person_only_no_crowd.json``."""
    val_ann: str = ""
    train_images: str = ""
    """Train image folder; ``""`` -> ``<root>/images/train2017``."""
    val_images: str = ""
    analyze_json: str = DEFAULT_ANALYZE_JSON
    """``data_analyze.json`` with the loss class weights; when absent they are computed from the train set."""
    max_train_images: int = 0
    """Use only the first N train images (0 = all)."""
    max_val_images: int = 0
    jitter: float = 0.0
    """ROI jitter of the train set (fraction of the box size), re-drawn each epoch."""
    batch_size: int = 4
    """Images per step (all their ROIs go into the step, up to ``max_rois_per_step``)."""
    max_rois_per_step: int = 32
    """Cap on ROIs per step (memory: each ROI's logits are [3, H, W]); sampled deterministically above it."""
    num_workers: int = 2
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

    extractor: str = DEFAULT_EXTRACTOR
    tensor: str = DEFAULT_FEATURE_TENSOR
    cache: str = DEFAULT_FEATURE_CACHE
    """Feature-cache folder (fp16 per image), or ``"none"`` to extract on the fly every epoch."""

    @property
    def cache_dir(self) -> Path | None:
        """The cache folder, or ``None`` for on-the-fly extraction (``cache = "none"``)."""
        return parse_cache_dir(self.cache)


@dataclass
class HeadSection:
    """:class:`roiseg.modeling.HeadConfig` fields the user chooses (channels/stride/input come from the extractor)."""

    variant: str = _head_default("variant")
    roi_size: int = _head_default("roi_size")
    mask_size: int = _head_default("mask_size")
    hidden: int = _head_default("hidden")
    num_convs: int = _head_default("num_convs")
    detail_channels: int = _head_default("detail_channels")
    sampling_ratio: int = _head_default("sampling_ratio")
    groups: int = _head_default("groups")

    def head_config(self, in_channels: int, stride: int, input_hw: tuple[int, int]) -> HeadConfig:
        return HeadConfig(in_channels=in_channels, stride=stride, input_hw=tuple(input_hw), **dataclasses.asdict(self))


@dataclass
class OptimConfig:
    """AdamW with a per-step schedule: linear warm-up to ``lr``, then cosine down to ``lr * min_lr_ratio``."""

    lr: float = 1e-3
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

    epochs: int = 12
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA when usable), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun each rank uses ``cuda:LOCAL_RANK``."""
    out: str = DEFAULT_CHECKPOINT_DIR
    """Run folder: checkpoints, ``best.pth``, ``metrics.jsonl``, ``curves.png``, validation pictures."""
    keep: int = 0
    """Keep only the newest N epoch checkpoints (0 = keep all); ``best.pth`` is always kept."""
    stop_after: int = 0
    """Stop after this epoch although the schedule spans ``epochs`` (0 = run all); continue with ``--resume``."""
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
        return {name: _section_to_dict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """Inverse of :meth:`to_dict`; missing keys keep their defaults, unknown ones are an InputError."""
        cfg = cls()
        apply_overrides(cfg, _flatten(d, source), source)
        return cfg

    def validate(self) -> "TrainConfig":
        """Check value ranges; InputError naming ``section.key``. Returns ``self``."""
        _check_ranges(self)
        return self

    def loss_config(self, class_weights: Sequence[float] | None) -> LossConfig:
        """The loss section with the class weights resolved (explicit ones win)."""
        weights = list(self.loss.class_weights) if self.loss.class_weights else class_weights
        return dataclasses.replace(self.loss, class_weights=None if weights is None else list(weights))


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; InputError naming the file on a missing file or a syntax error."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file not found: {p}")
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: invalid TOML: {exc}") from exc


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
        apply_overrides(cfg, _flatten(base, "checkpoint config"), "checkpoint config")
    if toml_path is not None:
        apply_overrides(cfg, _flatten(read_toml(toml_path), str(toml_path)), str(toml_path))
    if overrides:
        items = parse_set(overrides) if not isinstance(overrides, Mapping) else dict(overrides)
        apply_overrides(cfg, items, "override")
    return cfg.validate()


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["section.key=value", ...]`` -> ``{"section.key": value}`` with TOML-parsed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise InputError(f"--set {item!r}: expected section.key=value (e.g. optim.lr=3e-4)")
        out[key.strip()] = parse_value(text.strip())
    return out


def parse_value(text: str) -> Any:
    """A TOML value (``3e-4``, ``true``, ``[1, 2]``, ``"x"``); anything else is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: TrainConfig, items: Mapping[str, Any], source: str) -> TrainConfig:
    """Set ``cfg.<section>.<key> = value`` for each ``"section.key"``, converting to the field type."""
    for dotted, value in items.items():
        section_name, _, key = dotted.partition(".")
        if section_name not in SECTIONS:
            raise InputError(f"{source}: unknown config section {section_name!r} in {dotted!r} "
                             f"(sections: {', '.join(SECTIONS)})")
        section = getattr(cfg, section_name)
        hints = _field_types(type(section))
        if key not in hints:
            raise InputError(f"{source}: unknown config key {dotted!r} "
                             f"(keys of [{section_name}]: {', '.join(hints)})")
        setattr(section, key, _coerce(value, hints[key], f"{source}: {dotted}"))
    return cfg


def _flatten(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for section, values in d.items():
        if not isinstance(values, Mapping):
            raise InputError(f"{source}: {section!r} must be a [section] table, got {type(values).__name__}")
        for key, value in values.items():
            out[f"{section}.{key}"] = value
    return out


def _section_to_dict(section: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(section):
        v = getattr(section, f.name)
        out[f.name] = list(v) if isinstance(v, (tuple, list)) else ([] if v is None else v)
    return out


def _field_types(cls: type) -> dict[str, Any]:
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in cls.__dataclass_fields__}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to the annotated type ``tp`` (int, float, bool, str, list/tuple of those, Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, list) and not value and type(None) in args):
            return None  # TOML has no null: an empty list stands for "not set"
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        seq = [_coerce(v, item, where) for v in value]
        return tuple(seq) if origin is tuple else seq
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise InputError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _check_ranges(cfg: TrainConfig) -> None:
    checks: list[tuple[str, bool, Any]] = [
        ("data.batch_size", cfg.data.batch_size >= 1, ">= 1"),
        ("data.max_rois_per_step", cfg.data.max_rois_per_step >= 1, ">= 1"),
        ("data.num_workers", cfg.data.num_workers >= 0, ">= 0"),
        ("data.max_train_images", cfg.data.max_train_images >= 0, ">= 0"),
        ("data.max_val_images", cfg.data.max_val_images >= 0, ">= 0"),
        ("data.jitter", 0.0 <= cfg.data.jitter < 1.0, "in [0, 1)"),
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
        cfg.head.head_config(1, 8, (64, 64)).validate()
    except ValueError as exc:
        raise InputError(f"config [head]: {exc}") from exc


__all__ = [
    "CACHE_DISABLED", "DEFAULT_CONFIG_PATH", "DataConfig", "FeaturesConfig", "HeadSection", "OptimConfig", "RunConfig",
    "SECTIONS", "TrainConfig", "apply_overrides", "load_config", "parse_set", "parse_value", "read_toml",
]
