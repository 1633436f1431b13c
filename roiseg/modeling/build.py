"""Building a head from its config, whatever the variant."""

from __future__ import annotations

from typing import Union

from torch import nn

from roiseg.modeling.config import HeadConfig
from roiseg.modeling.query_head import QueryMaskHead
from roiseg.modeling.roi_head import RoiMaskHead

MaskHead = Union[RoiMaskHead, QueryMaskHead]
"""Any head: ``forward`` gives [N, 3, M, M] ROI-grid logits; ``full_logits`` / ``predict_masks`` paste them."""


def build_head(cfg: HeadConfig) -> MaskHead:
    """The head of ``cfg.variant``: ``baseline``/``detail`` (:class:`RoiMaskHead`) or ``query``."""
    cfg.validate()
    return QueryMaskHead(cfg) if cfg.variant == "query" else RoiMaskHead(cfg)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())
