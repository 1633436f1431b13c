"""The head's configuration: which variant, its sizes, and the detector taps it reads."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Literal

Variant = Literal["baseline", "detail", "query"]
VARIANTS: tuple[str, ...] = ("baseline", "detail", "query")
ATTENTION_MASKS: tuple[str, ...] = ("soft", "hard")


def auto_embed_dim(in_channels: int) -> int:
    """Embedding width scaled with the detector's primary tap: 32 up to 128 channels, 64 up to 512, else 128."""
    return 32 if in_channels <= 128 else 64 if in_channels <= 512 else 128


@dataclass
class HeadConfig:
    """Hyper-parameters of the head.

    ``in_channels``, ``stride`` (pixels per cell) and ``input_hw`` (pixels) describe the primary
    tap, ``extra_channels`` / ``extra_strides`` the extra taps; all come from the extractor
    (:data:`EXTRACTOR_FIELDS`), the rest is chosen by the user.
    """

    EXTRACTOR_FIELDS: ClassVar[tuple[str, ...]] = ("in_channels", "stride", "input_hw", "extra_channels", "extra_strides")

    in_channels: int
    stride: int
    input_hw: tuple[int, int]
    extra_channels: tuple[int, ...] = ()
    """Channels of each extra detector tap (the ``query`` variant uses them; the others ignore them)."""
    extra_strides: tuple[int, ...] = ()
    """Stride of each extra tap in input pixels."""
    variant: Variant = "query"
    roi_size: int = 14
    """Side of the RoI-aligned feature grid (cells)."""
    mask_size: int = 56
    """Side of the output logit grid over the ROI (cells); ``roi_size * 2**k`` for baseline/detail."""
    hidden: int = 256
    num_convs: int = 4
    detail_channels: int = 32
    sampling_ratio: int = 2
    """RoIAlign samples per bin along each axis (fixed, so torch and ONNX Runtime agree exactly)."""
    groups: int = 32
    embed_dim: int = 32
    """``query``: channels of the per-image mask embedding (stride 4) and of the queries; ``0``: scaled
    with the detector (:func:`auto_embed_dim`: 32 / 64 / 128 for up to 128 / 512 / more channels)."""
    query_layers: int = 3
    """``query``: masked cross-attention decoder layers."""
    query_heads: int = 4
    """``query``: attention heads (must divide ``embed_dim``)."""
    attention_mask: str = "soft"
    """``query``: how the previous layer's prediction masks the cross-attention: ``"soft"`` (additive
    bias = the class's log-probability per cell: continuous) or ``"hard"`` (Mask2Former's 0.5
    threshold: discontinuous; only for checkpoints made before roiseg 0.2)."""
    refine_channels: int = 16
    """``query``: channels of the per-ROI RGB refinement (a residual conv stack over the RoI-aligned
    image, the logits and the embedding at the ROI grid; 0 = off)."""
    local_channels: int = 64
    """``query``: channels of the per-ROI local branch (RoIAlign of the primary tap at ``roi_size``,
    a 1x1 reduce and three 3x3 convs, upsampled to the ROI grid and added to the ROI's tokens
    through a 1x1 projection that starts at zero; 0 = off)."""
    centred_logits: bool = True
    """``query``: the class logits read the ROI's tokens minus their mean over the ROI's cells, so the
    dot products shape the mask inside the ROI and only the per-class bias sets its level (the box
    prior): a short training run cannot shift a whole ROI away from the box before it has learned
    where the person is. ``False`` only for checkpoints made before roiseg 0.2."""
    person_aux: bool = True
    """``query``: a training-only 1x1 conv on the per-image embedding predicts, at stride 4, the share of
    each cell covered by any person (YOLACT's semantic loss; weight ``loss.person_weight``): every pixel of
    the image supervises the shared embedding, not only those inside the ROIs. Not exported; ignored by the
    other variants."""
    neighbour_map: bool = True
    """``query``: each ROI's tokens also get, through a 1x1 projection that starts at zero, how much of the
    *other* ROIs of the same image covers each of its cells (soft box edges: continuous in the boxes), so the
    head knows where the other persons' boxes are; a ROI's mask then depends on the other ROIs given with it."""
    neighbour_convs: bool = True
    """``query`` with ``neighbour_map``: the map is also an input channel of the per-ROI conv stacks — the local
    branch (area means down to ``roi_size``, beside the reduced primary tap) and the RGB refinement (at the ROI
    grid, beside the image and the logits) — so they can place the line between the ROI's person and its
    neighbours, not only shift each cell's logits."""
    box_prior: float = 4.0
    """Initial logit margin of the target class over background inside the ROI (and of background
    over non-target): the untrained head predicts the whole box and learns the residual. Only the
    initialisation depends on it. 0 = the plain (random) initialisation."""

    LEGACY: ClassVar[dict[str, object]] = {"attention_mask": "hard", "refine_channels": 0, "box_prior": 0.0,
                                           "centred_logits": False, "local_channels": 0, "person_aux": False,
                                           "neighbour_map": False, "neighbour_convs": False}
    """Values of fields that configs stored before they existed had (read by :meth:`from_dict`)."""

    @property
    def embed_width(self) -> int:
        """``embed_dim``, or the detector-scaled width when it is 0."""
        return self.embed_dim or auto_embed_dim(self.in_channels)

    @property
    def has_person_map(self) -> bool:
        """The head carries the training-only person map (``person_aux`` on a ``query`` head)."""
        return self.variant == "query" and self.person_aux

    @property
    def has_neighbour_map(self) -> bool:
        """The head reads the other ROIs of the image (``neighbour_map`` on a ``query`` head)."""
        return self.variant == "query" and self.neighbour_map

    @property
    def neighbour_channels(self) -> int:
        """Input channels the per-ROI conv stacks take from the neighbour map (``neighbour_convs``): 1 or 0."""
        return int(self.has_neighbour_map and self.neighbour_convs)

    @property
    def num_extra_taps(self) -> int:
        """Extra detector taps the head reads: those of ``extra_channels`` for ``query``, none otherwise."""
        return len(self.extra_channels) if self.variant == "query" else 0

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("input_hw", "extra_channels", "extra_strides"):
            d[key] = list(d[key])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "HeadConfig":
        d = dict(d)
        for key in ("input_hw", "extra_channels", "extra_strides"):
            if key in d:
                d[key] = tuple(int(v) for v in d[key])
        known = {f for f in cls.__dataclass_fields__}
        legacy = {k: v for k, v in cls.LEGACY.items() if k not in d}
        return cls(**legacy, **{k: v for k, v in d.items() if k in known})

    def validate(self) -> None:
        """ValueError naming the field when a value cannot build a head."""
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown head variant {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if len(self.extra_channels) != len(self.extra_strides):
            raise ValueError(f"extra_channels {list(self.extra_channels)} and extra_strides "
                             f"{list(self.extra_strides)} differ in length")
        if self.variant == "query":
            if self.embed_dim < 0 or self.embed_width % self.query_heads:
                raise ValueError(f"query_heads ({self.query_heads}) must divide embed_dim ({self.embed_width})")
            if self.attention_mask not in ATTENTION_MASKS:
                raise ValueError(f"attention_mask must be one of {', '.join(ATTENTION_MASKS)}, got {self.attention_mask!r}")
            if self.refine_channels < 0:
                raise ValueError(f"refine_channels must be >= 0, got {self.refine_channels}")
            if self.local_channels < 0:
                raise ValueError(f"local_channels must be >= 0, got {self.local_channels}")
            return
        ups = self.mask_size / self.roi_size
        if ups < 1 or 2 ** round(math.log2(ups)) != ups:
            raise ValueError(f"mask_size ({self.mask_size}) must be roi_size ({self.roi_size}) times a power of 2")
