"""The human-readable summary of a training run that ``roiseg train`` prints."""

from __future__ import annotations

from typing import Any, Iterable


def fmt_metric(v: float | None) -> str:
    """A metric with 4 decimals, or ``n/a`` when it could not be computed."""
    return "n/a" if v is None else f"{v:.4f}"


def skipped_note(r: dict[str, Any]) -> str:
    """``"; skipped 1 unreadable train and 0 validation image(s)"`` when an epoch left images out, else ``""``."""
    train, val = r.get("skipped_images", 0), r.get("val_skipped_images", 0)
    return f"; skipped {train} unreadable train and {val} validation image(s)" if train or val else ""


def epoch_line(r: dict[str, Any]) -> str:
    """One line of an epoch record: losses, the IoUs next to the box baseline, speed, time, skipped images."""
    return (f"epoch {r['epoch']}: loss {r['train_loss']:.4f}, val loss {r['val_loss']:.4f}, "
            f"mIoU {fmt_metric(r.get('miou'))}, mean ROI target IoU {fmt_metric(r.get('mean_roi_target_iou'))} "
            f"(box baseline {fmt_metric(r.get('box_baseline_roi_target_iou'))}), {r['rois_per_s']:.1f} ROIs/s, "
            f"{r['epoch_time_s']:.1f} s{skipped_note(r)}")


def format_summary(summary: dict[str, Any]) -> Iterable[str]:
    """Lines for the CLI from the summary :func:`roiseg.training.engine.train` returns."""
    best = summary["best"]
    yield f"run folder: {summary['out']} (epoch {summary['last_epoch']} of {summary['epochs']} done)"
    for r in summary["history"]:
        yield epoch_line(r)
    if best.get("file"):
        yield f"best: epoch {best['epoch']}, mIoU {best['miou']:.4f} ({best['file']}, copied to best.pth)"


__all__ = ["epoch_line", "fmt_metric", "format_summary", "skipped_note"]
