"""roiseg's view of the generic error statistics (:class:`graph_tools.ErrorStats`): the IoU kept is the
target class's, reported as ``target_iou`` (pooled) and ``min_roi_target_iou`` (the lowest ROI)."""

from __future__ import annotations

from typing import Any

from graph_tools import ErrorStats
from roiseg.conventions import FUSED_LABELS_OUTPUT, FUSED_MASKS_OUTPUT, TARGET

RENAMED: dict[str, str] = {"class_iou": "target_iou", "min_item_class_iou": "min_roi_target_iou"}


def output_stats(name: str, description: str, output: str) -> ErrorStats:
    """Statistics of a fused model's ``output`` tensor: probabilities for ``masks``, class maps for
    ``labels``, plain values otherwise; the target class's IoU for the first two."""
    return ErrorStats(name, description, probabilities=output == FUSED_MASKS_OUTPUT,
                      labels=output == FUSED_LABELS_OUTPUT, iou_class=TARGET)


def value_stats(name: str, description: str) -> ErrorStats:
    """Statistics of unbounded values (features, a preprocessed image): tolerance scaled by ``max |ref|``."""
    return ErrorStats(name, description, probabilities=False)


def stage_result(stats: ErrorStats, atol: float, min_argmax: float, mean_atol: float | None = None) -> dict[str, Any]:
    """:meth:`ErrorStats.result` with the class IoU named for the target class."""
    return {RENAMED.get(k, k): v for k, v in stats.result(atol, min_argmax, mean_atol).items()}
