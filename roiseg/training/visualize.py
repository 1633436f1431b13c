"""Pictures written during training: the per-epoch validation picture and the loss/mIoU curves.

Validation picture (``validation_all_images_epoch_{epoch:04d}.png``): one column per validation
image, each at its original aspect ratio. Top row: ground truth (each instance's mask in its own
colour, its ROI as a red box with the instance number beside it). Bottom row: the prediction of
each instance's ROI (its target mask, same colour as in the top row, no boxes). Column title:
file name and person count.

Everything is drawn with matplotlib's object API on an Agg canvas (no global pyplot state, safe in
worker threads) and written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from roiseg.conventions import TARGET, normalised_rois_to_pixels, read_image
from roiseg.errors import InputError
from roiseg.modeling.paste import class_ids
from roiseg.training.metrics_log import read_metrics
from roiseg.utils.atomic import atomic_path
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

NUM_FALLBACK_IMAGES: int = 4
PANEL_HEIGHT_IN: float = 4.0
"""Height of one picture row in inches (at :data:`DPI`)."""
LABEL_MARGIN_IN: float = 0.3
"""Left margin for the row labels ("ground truth", "prediction"), inches."""
TITLE_MARGIN_IN: float = 0.6
"""Extra figure height for the column titles and the gap between rows, inches."""
DPI: int = 100
MASK_ALPHA: float = 0.55
BOX_COLOR = (1.0, 0.0, 0.0)
# Instance colours: tab10 without its red (reserved for the boxes) and grey (hard to see).
_TAB10 = [
    (0.122, 0.467, 0.706), (1.000, 0.498, 0.055), (0.173, 0.627, 0.173), (0.580, 0.404, 0.741),
    (0.549, 0.337, 0.294), (0.890, 0.467, 0.761), (0.737, 0.741, 0.133), (0.090, 0.745, 0.812),
]


def instance_color(k: int) -> tuple[float, float, float]:
    """RGB in [0, 1] of instance ``k`` (0-based); the same in both rows of the picture."""
    return _TAB10[k % len(_TAB10)]


# --------------------------------------------------------------------------------------------
# Image choice and predictions
# --------------------------------------------------------------------------------------------
def select_validation_images(dataset: Any, names: Sequence[str], count: int = NUM_FALLBACK_IMAGES) -> list[int]:
    """Dataset indices of the validation images to draw: the named ones first, then filled up to ``count``.

    ``dataset``: a :class:`roiseg.data.dataset.CocoPersonImages` (``find(file_name) -> index | None``,
    ``readable(i)``). Named images are kept in order (duplicates dropped); names not in the dataset,
    or whose file cannot be decoded, are skipped with a warning. When fewer than ``count`` remain,
    the other images are added in dataset order (every image of a person-only set has persons;
    unreadable ones are passed over), so the picture has ``count`` columns whenever the set has them.
    """
    readable = getattr(dataset, "readable", lambda i: True)
    found: list[int] = []
    missing: list[str] = []
    for name in names:
        idx = dataset.find(name)
        if idx is None or not readable(idx):
            missing.append(name)
        elif idx not in found:
            found.append(int(idx))
    if missing:
        LOG.warning("validation picture: %d image(s) not in the validation set or unreadable, skipped: %s",
                    len(missing), ", ".join(missing))
    named = len(found)
    for idx in range(len(dataset)):
        if len(found) >= count:
            break
        if idx not in found and readable(idx):
            found.append(idx)
    if named == 0 and names:
        LOG.warning("validation picture: none of the named images found; using the first %d validation images", len(found))
    elif len(found) > named and names:
        added = ", ".join(dataset.record(i)["file_name"] for i in found[named:])
        LOG.info("validation picture: %d named image(s) found; added %s to show %d", named, added, len(found))
    return found


@torch.no_grad()
def predictions_to_original(probs: torch.Tensor, orig_hw: tuple[int, int]) -> np.ndarray:
    """Per-ROI class probabilities at input resolution -> target masks at original resolution.

    Args:
        probs: [K, 3, H, W] probabilities (``RoiMaskHead.predict_masks``) of one image's K ROIs.
        orig_hw: ``(H0, W0)`` of the original image in pixels.

    Returns:
        [K, H0, W0] bool: bilinear resize of the probabilities (``align_corners=False``), then
        ``argmax == TARGET``.
    """
    if probs.dim() != 4:
        raise ValueError(f"probs must be [K, 3, H, W], got {tuple(probs.shape)}")
    h0, w0 = int(orig_hw[0]), int(orig_hw[1])
    if probs.shape[0] == 0:
        return np.zeros((0, h0, w0), dtype=bool)
    up = F.interpolate(probs.float(), size=(h0, w0), mode="bilinear", align_corners=False)
    return (class_ids(up) == TARGET).cpu().numpy()


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
def overlay_masks(rgb: np.ndarray, masks: np.ndarray, alpha: float = MASK_ALPHA) -> np.ndarray:
    """[H, W, 3] uint8 RGB + [K, H, W] bool -> [H, W, 3] uint8 with mask ``k`` tinted :func:`instance_color` (k)."""
    out = rgb.astype(np.float32) / 255.0
    for k, m in enumerate(np.asarray(masks, dtype=bool)):
        if m.any():
            out[m] = (1.0 - alpha) * out[m] + alpha * np.asarray(instance_color(k), dtype=np.float32)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _style_axis(ax, title: str | None = None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)


def _draw_boxes(ax, rois: np.ndarray, image_hw: tuple[int, int]) -> None:
    """Red ROI boxes (normalised xyxy -> original pixels) with the instance number (1-based) beside each."""
    label_room = 0.06 * image_hw[0]  # boxes touching the top get their number inside, below the edge
    for k, (x1, y1, x2, y2) in enumerate(normalised_rois_to_pixels(rois, image_hw)):
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=BOX_COLOR, linewidth=1.5))
        ax.text(x1, y1, str(k + 1), color="white", fontsize=8, fontweight="bold",
                va="bottom" if y1 >= label_room else "top", ha="left",
                bbox={"facecolor": BOX_COLOR, "edgecolor": "none", "pad": 1.0})


def build_validation_figure(dataset: Any, indices: Sequence[int], pred_masks: Sequence[np.ndarray]) -> Figure:
    """The validation picture as a matplotlib :class:`Figure` with a 2 x N axes grid (see module docstring).

    ``pred_masks[i]``: [K, H0, W0] bool predicted target masks of image ``indices[i]`` at original
    resolution, in the instance order of ``dataset.instance_masks(indices[i])``.
    """
    if len(indices) == 0:
        raise ValueError("no validation images to draw")
    if len(pred_masks) != len(indices):
        raise ValueError(f"{len(pred_masks)} prediction(s) for {len(indices)} image(s)")
    columns = []
    for idx, pred in zip(indices, pred_masks):
        rec = dataset.record(idx)
        gt, rois = dataset.instance_masks(idx)
        gt, pred = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
        hw = (int(rec["height"]), int(rec["width"]))
        if pred.shape != gt.shape:
            raise ValueError(f"{rec['file_name']}: predicted masks {pred.shape} do not match ground truth {gt.shape}")
        rgb = np.ascontiguousarray(read_image(rec["path"])[:, :, ::-1])
        if rgb.shape[:2] != hw:
            raise ValueError(f"{rec['path']}: image is {rgb.shape[1]}x{rgb.shape[0]}, annotations say {hw[1]}x{hw[0]}")
        columns.append((rec, hw, rgb, gt, np.asarray(rois, dtype=np.float32).reshape(-1, 4), pred))

    ratios = [hw[1] / hw[0] for _, hw, *_ in columns]
    fig_w, fig_h = PANEL_HEIGHT_IN * sum(ratios) + LABEL_MARGIN_IN, PANEL_HEIGHT_IN * 2 + TITLE_MARGIN_IN
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, len(columns), width_ratios=ratios, left=LABEL_MARGIN_IN / fig_w, right=0.995,
                            bottom=0.005, top=1.0 - 0.45 / fig_h, wspace=0.02, hspace=0.08)
    for col, (rec, hw, rgb, gt, rois, pred) in enumerate(columns):
        top, bottom = fig.add_subplot(grid[0, col]), fig.add_subplot(grid[1, col])
        top.imshow(overlay_masks(rgb, gt), interpolation="nearest")
        _draw_boxes(top, rois, hw)
        top.set_xlim(-0.5, hw[1] - 0.5)
        top.set_ylim(hw[0] - 0.5, -0.5)
        persons = "person" if len(gt) == 1 else "persons"
        _style_axis(top, f"{rec['file_name']} ({len(gt)} {persons})")
        bottom.imshow(overlay_masks(rgb, pred), interpolation="nearest")
        _style_axis(bottom)
        if col == 0:
            top.set_ylabel("ground truth", fontsize=9)
            bottom.set_ylabel("prediction", fontsize=9)
    return fig


def render_validation_picture(dataset: Any, indices: list[int], pred_masks: list[np.ndarray], out: str | Path) -> Path:
    """Draw :func:`build_validation_figure` and write it atomically as a PNG to ``out``."""
    fig = build_validation_figure(dataset, indices, pred_masks)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(out)


# --------------------------------------------------------------------------------------------
# Curves
# --------------------------------------------------------------------------------------------
def _series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["epoch"], float(r[key])) for r in records
           if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
    return [p[0] for p in pts], [p[1] for p in pts]


def build_curves_figure(records: Sequence[dict]) -> Figure:
    """Two panels over epochs: loss (``train_loss``, ``val_loss``) and IoU (``miou``,
    ``mean_roi_target_iou``, and ``box_baseline_roi_target_iou`` as a dashed reference)."""
    fig = Figure(figsize=(10.0, 4.0), dpi=DPI)
    FigureCanvasAgg(fig)
    ax_loss, ax_iou = fig.subplots(1, 2)
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        x, y = _series(records, key)
        if x:
            ax_loss.plot(x, y, marker="o", markersize=3, label=label)
    for key, label, style in (("miou", "mIoU (target, non-target)", "-"),
                              ("mean_roi_target_iou", "mean per-ROI target IoU", "-"),
                              ("box_baseline_roi_target_iou", "box baseline (per-ROI target IoU)", "--")):
        x, y = _series(records, key)
        if x:
            ax_iou.plot(x, y, style, marker="o" if style == "-" else None, markersize=3, label=label)
    ax_loss.set_title("loss")
    for ax in (ax_loss, ax_iou):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_iou.set_title("validation IoU")
    ax_iou.set_ylim(0.0, 1.0)
    for ax in (ax_loss, ax_iou):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(metrics_jsonl: str | Path, out: str | Path) -> Path:
    """Draw the loss and mIoU curves of a ``metrics.jsonl`` into ``out`` (PNG, written atomically)."""
    records = read_metrics(metrics_jsonl)
    if not records:
        raise InputError(f"{metrics_jsonl}: no metrics records to plot")
    fig = build_curves_figure(records)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(out)


__all__ = [
    "build_curves_figure",
    "build_validation_figure",
    "instance_color",
    "overlay_masks",
    "plot_curves",
    "predictions_to_original",
    "render_validation_picture",
    "select_validation_images",
]
