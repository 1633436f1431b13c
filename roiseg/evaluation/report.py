"""Presentation of an evaluation: text table, JSON, Markdown, worst ROIs (:mod:`roiseg.evaluation.roi`), and
the COCO mask AP table of the instance evaluation (:mod:`roiseg.evaluation.instances`).

* :func:`format_table` (text for the terminal) and :func:`format_markdown` share one layout: one row
  per figure, columns ``all``, ``small``, ``medium``, ``large`` (COCO size buckets of the
  annotation area), ``crowded`` and ``alone`` (:data:`ROI_GROUPS`), plus the ROI counts and the mask AP rows.
* :func:`write_report_json`, :func:`write_markdown`, :func:`write_worst_picture` write atomically
  (temporary name, then rename), so a failed run leaves no partial file.

Worst-ROI picture: one row per ROI (lowest target IoU first), three panels: the image crop around
the ROI with its box, the ground truth and the prediction (target green, non-target orange, drawn
over a dimmed crop); row title = file name, annotation id, target IoU and boundary IoU.
"""

from __future__ import annotations

import json

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from roiseg.conventions import NON_TARGET, SIZE_BUCKETS, TARGET, normalised_rois_to_pixels
from roiseg.errors import InputError
from roiseg.metrics.coco_ap import AP_KEYS
from roiseg.runtime.masks import SOURCE_NOTES
from roiseg.utils.atomic import atomic_path, atomic_write, write_all, write_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

INSTANCE_PROTOCOL: str = "instances"
"""``report["protocol"]`` of the instance evaluation (:mod:`roiseg.evaluation.instances`)."""
ROI_GROUPS: tuple[str, str] = ("crowded", "alone")
"""ROIs with other persons' pixels inside the box (in the ground truth), and without: columns beside the size
buckets (``roiseg.evaluation.roi.roi_group``)."""
COLUMNS: tuple[str, ...] = ("all", *SIZE_BUCKETS, *ROI_GROUPS)
ROW_LABELS: dict[str, str] = {
    "target_iou": "target IoU",
    "box_floor_target_iou": "whole-box floor IoU",
    "target_boundary_iou": "target boundary IoU",
    "non_target_iou": "non-target IoU",
}
AP_ROWS: tuple[tuple[str, tuple[str | None, ...]], ...] = (  # the first columns' keys; the rest of the row blank
    ("mask AP", ("AP", "APs", "APm", "APl")),
    ("mask AP50", ("AP50",)),
    ("mask AP75", ("AP75",)),
)
TARGET_RGB = np.array([0.2, 0.85, 0.2])
NON_TARGET_RGB = np.array([1.0, 0.5, 0.1])
WORST_MARGIN: float = 0.1
"""Context around a worst ROI's box in its picture, as a fraction of the box size per side."""
PANEL_IN: float = 2.6
DPI: int = 100


@dataclass
class WorstRoi:
    """One low-scoring ROI for the ``--worst`` picture; arrays are a crop around the ROI."""

    file_name: str
    image_id: int
    ann_id: int
    target_iou: float
    boundary_iou: float | None
    image_bgr: np.ndarray  # [h, w, 3] uint8
    truth: np.ndarray  # [h, w] uint8 class ids
    pred: np.ndarray  # [h, w] uint8 class ids
    box: tuple[float, float, float, float]  # ROI x1, y1, x2, y2 in crop pixels


def crop_worst_roi(record: dict, ann_id: int, roi: np.ndarray, image_bgr: np.ndarray, truth: np.ndarray,
                   labels: np.ndarray, target_iou: float, boundary_iou: float) -> WorstRoi:
    """A :class:`WorstRoi` of one ROI: ``image_bgr`` [H0, W0, 3], ``truth``/``labels`` [H0, W0] class
    ids, ``roi`` normalised, cropped to the ROI's box plus :data:`WORST_MARGIN` per side."""
    h0, w0 = labels.shape
    x1, y1, x2, y2 = normalised_rois_to_pixels(roi, (h0, w0))[0]
    mx, my = WORST_MARGIN * (x2 - x1), WORST_MARGIN * (y2 - y1)
    cx0, cy0 = max(0, int(np.floor(x1 - mx))), max(0, int(np.floor(y1 - my)))
    cx1, cy1 = min(w0, int(np.ceil(x2 + mx))), min(h0, int(np.ceil(y2 + my)))
    cx1, cy1 = max(cx1, cx0 + 1), max(cy1, cy0 + 1)
    sl = (slice(cy0, cy1), slice(cx0, cx1))
    return WorstRoi(
        file_name=record["file_name"], image_id=record["id"], ann_id=ann_id, target_iou=float(target_iou),
        boundary_iou=None if np.isnan(boundary_iou) else float(boundary_iou),
        image_bgr=image_bgr[sl].copy(), truth=truth[sl].copy(), pred=labels[sl].copy(),
        box=(float(x1 - cx0), float(y1 - cy0), float(x2 - cx0), float(y2 - cy0)),
    )


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def table_rows(report: dict) -> list[list[str]]:
    """Header + rows of strings: ROIs, each figure (non-target: its ROI count in brackets), mask AP."""
    figs = report["figures"]
    rows = [["figure", *COLUMNS], ["ROIs", *(str(figs["target_iou"][c]["rois"]) for c in COLUMNS)]]
    for name, label in ROW_LABELS.items():
        counted = name == "non_target_iou"  # over its own ROIs (those with other persons): show how many
        cells = [_fmt(figs[name][c]["mean"]) + (f" ({figs[name][c]['rois']})" if counted else "") for c in COLUMNS]
        rows.append([label + (" (ROIs)" if counted else ""), *cells])
    ap = report["mask_ap"]
    for label, keys in AP_ROWS:
        padded = [*keys, *[None] * (len(COLUMNS) - len(keys))]
        rows.append([label, *("" if k is None else _fmt(ap.get(k)) for k in padded)])
    return rows


def _summary_line(report: dict) -> str:
    im = report["images"]
    skipped = ", ".join(f"{n} {r}" for r, n in im["skipped"].items() if n) or "none"
    unscored = report.get("unscored_rois", 0)
    rois = f"{report['num_rois']} ROIs" + (f" ({unscored} not scored: no target pixel inside the box, e.g. a box off "
                                           "the image)" if unscored else "")
    source = report.get("mask_source", "probs")
    rois += "" if source == "probs" else f"; masks from {SOURCE_NOTES[source]}"
    return (f"{im['evaluated']} of {im['selected']} images evaluated (skipped: {skipped}), {rois}, "
            f"{report['images_per_s']:.2f} images/s; input {report['input_hw'][0]}x{report['input_hw'][1]}, "
            f"boundary dilation ratio {report['dilation_ratio']:g}")


def format_table(report: dict) -> str:
    """The figures as an aligned text table followed by a one-line summary."""
    rows = table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + ["", _summary_line(report)])


def format_markdown(report: dict, title: str = "roiseg evaluate") -> str:
    """The figures as a Markdown document: title, source, table, summary."""
    rows = table_rows(report)
    out = [f"# {title}", "", f"Annotations `{report['annotations']}`, images `{report['images_dir']}`.", "",
           "| " + " | ".join(rows[0]) + " |", "|" + "|".join(["---"] + ["---:"] * (len(rows[0]) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    out += ["", _summary_line(report) + ".", "",
            "Non-target IoU: over the ROIs holding other persons' pixels (count in brackets): the *crowded* ROIs; "
            "the *alone* ones hold none, so their non-target cell is empty. "
            "The whole-box floor predicts the whole ROI as target on the model's input grid, resized back; "
            "a head must beat it clearly.", ""]
    return "\n".join(out)


def write_report_json(path: str | Path, report: dict) -> Path:
    """Atomically write the report (with its per-ROI records) as indented JSON."""
    return write_json(path, report)


def write_markdown(path: str | Path, report: dict, title: str = "roiseg evaluate") -> Path:
    """Atomically write :func:`format_markdown`."""
    text = format_markdown(report, title)
    return atomic_write(path, lambda p: p.write_text(text))


def _overlay(image_bgr: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB float image: dimmed crop with target / non-target pixels tinted."""
    rgb = image_bgr[:, :, ::-1].astype(np.float64) / 255.0 * 0.5
    for cls, colour in ((TARGET, TARGET_RGB), (NON_TARGET, NON_TARGET_RGB)):
        m = labels == cls
        rgb[m] = 0.35 * rgb[m] + 0.65 * colour
    return np.clip(rgb, 0.0, 1.0)


def render_worst_figure(worst: Sequence[WorstRoi]) -> "Figure":
    """The worst-ROI picture (module docstring) as a matplotlib Figure (Agg canvas)."""
    try:  # imported here: evaluate needs none of it; the light install has no matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError as exc:
        raise InputError("the --worst picture needs matplotlib: install roiseg[train] (or matplotlib)") from exc

    if not worst:
        raise InputError("no ROI to draw: the evaluation kept no worst ROI")
    fig = Figure(figsize=(3 * PANEL_IN, len(worst) * (PANEL_IN + 0.4)), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(worst), 3, squeeze=False)
    for row, roi in zip(axes, worst):
        panels = (roi.image_bgr[:, :, ::-1], _overlay(roi.image_bgr, roi.truth), _overlay(roi.image_bgr, roi.pred))
        for ax, panel, name in zip(row, panels, ("image", "ground truth", "prediction")):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(name, fontsize=8)
        x1, y1, x2, y2 = roi.box
        row[0].add_patch(Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=1.5))
        b = "-" if roi.boundary_iou is None else f"{roi.boundary_iou:.3f}"
        row[0].set_title(f"{roi.file_name}  ann {roi.ann_id}  IoU {roi.target_iou:.3f}  boundary {b}",
                         fontsize=8, loc="left")
    fig.tight_layout()
    return fig


def write_worst_picture(path: str | Path, worst: Sequence[WorstRoi]) -> Path:
    """Atomically write :func:`render_worst_figure` as PNG."""
    fig = render_worst_figure(worst)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _instance_summary(report: dict[str, Any]) -> str:
    im, th = report["images"], report["thresholds"]
    source = report.get("mask_source", "probs")
    masks = "" if source == "probs" else f"; masks and scores from {SOURCE_NOTES[source]}"
    skipped = ", ".join(f"{n} {r}" for r, n in im["skipped"].items() if n) or "none"
    return (f"{im['evaluated']} of {im['selected']} images evaluated (skipped: {skipped}); {report['num_detections']} "
            f"detections (score > {th['score']:g}, NMS IoU {th['iou']:g}, at most {th['max_instances']} per image), "
            f"{report['num_persons']} persons, {report['num_crowd_regions']} crowd regions (ignored); "
            f"{report['images_per_s']:.2f} images/s{masks}")


def format_instance_table(report: dict[str, Any]) -> str:
    """COCO mask AP with the detector's boxes, as printed by ``roiseg evaluate --rois detector``."""
    ap = report["mask_ap"]
    lines = ["mask AP with the model's own detections (COCO protocol, persons)",
             "  ".join(f"{k:>6}" for k in AP_KEYS), "  ".join(f"{_fmt(ap.get(k)):>6}" for k in AP_KEYS)]
    return "\n".join([*lines, "", _instance_summary(report)])


def format_instance_markdown(report: dict[str, Any], title: str = "roiseg evaluate --rois detector") -> str:
    """The instance figures as a Markdown document."""
    ap = report["mask_ap"]
    return "\n".join([f"# {title}", "", f"Model `{report['model']}`, annotations `{report['annotations']}`, images "
                      f"`{report['images_dir']}`.", "", "| " + " | ".join(AP_KEYS) + " |",
                      "|" + "|".join(["---:"] * len(AP_KEYS)) + "|", "| " + " | ".join(_fmt(ap.get(k)) for k in AP_KEYS) + " |",
                      "", _instance_summary(report) + ".", ""])


def write_instance_markdown(path: str | Path, report: dict[str, Any], title: str = "roiseg evaluate --rois detector") -> Path:
    """:func:`format_instance_markdown` written atomically."""
    text = format_instance_markdown(report, title)
    return atomic_write(path, lambda p: p.write_text(text))


def format_report(report: dict[str, Any]) -> str:
    """The text ``roiseg evaluate`` prints for either evaluation (by ``report["protocol"]``)."""
    return format_instance_table(report) if report.get("protocol") == INSTANCE_PROTOCOL else format_table(report)


def write_report_markdown(path: str | Path, report: dict[str, Any]) -> Path:
    """:func:`write_markdown` or :func:`write_instance_markdown`, by ``report["protocol"]``."""
    if report.get("protocol") == INSTANCE_PROTOCOL:
        return write_instance_markdown(path, report)
    return write_markdown(path, report)


def write_outputs(report: dict[str, Any], worst: Sequence[WorstRoi], json_path: str | Path | None = None,
                  markdown_path: str | Path | None = None, worst_path: str | Path | None = None) -> list[Path]:
    """The report JSON, its Markdown and the worst-ROI picture (those given), all or none
    (:func:`roiseg.utils.atomic.write_all`: a failure such as a full disk leaves none of them)."""
    writers: dict[Path, Any] = {}
    if json_path is not None:
        text = json.dumps(report, indent=2) + "\n"
        writers[Path(json_path)] = lambda p: p.write_text(text)
    if markdown_path is not None:
        md = format_instance_markdown(report) if report.get("protocol") == INSTANCE_PROTOCOL else format_markdown(report)
        writers[Path(markdown_path)] = lambda p: p.write_text(md)
    if worst_path is not None:
        fig = render_worst_figure(worst)
        writers[Path(worst_path)] = lambda p: fig.savefig(p, format="png", dpi=DPI)
    return write_all(writers)


__all__ = [
    "format_instance_table", "format_report", "write_instance_markdown", "write_report_markdown", "WORST_MARGIN", "WorstRoi", "crop_worst_roi", "format_markdown", "format_table", "render_worst_figure", "table_rows", "write_markdown", "write_report_json",
    "write_worst_picture", "write_outputs", "format_instance_markdown",
]
