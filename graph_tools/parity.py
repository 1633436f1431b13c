"""Parity between the fused ONNX model and the PyTorch path, stage by stage.

Stages (each compares a candidate with a reference on the same inputs):

* ``trim``: the trimmed detector inside the fused model (after any opset conversion) vs the feature
  tensor inside the *original* detector (exposed as an extra output, nothing else changed);
  onnxruntime on both sides.
* ``simplify``: the simplified fused model vs the unsimplified one (skipped when not simplified).
* ``fused``: the fused model in onnxruntime vs the PyTorch path: features from the original
  detector ONNX through onnxruntime, then the head in torch (``RoiMaskHead.predict_masks``), same
  preprocessing.

Per stage: max, mean and p99 absolute error, max relative error ``|got - ref| / max(|ref|, 1e-6)``,
and for probability maps the fraction of pixels whose argmax class agrees and the IoU of the
target masks (argmax == target) pooled over all ROIs. Errors are taken over every output element
(all ROIs, classes and pixels). p99 comes from a histogram over the float32 bit patterns of the
errors (the upper bin edge is reported: an upper bound within 0.8 %).

A stage passes when ``max abs <= atol`` (for ``trim``: ``atol * max(1, max |features|)``, since
features are not bounded like probabilities) and argmax agreement ``>= min_argmax``.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
import torch

from graph_tools.simplify import cpu_session
from roiseg.conventions import (
    DEFAULT_IMAGE_INPUT, FUSED_ROIS_INPUT, PARITY_ATOL, PARITY_MIN_ARGMAX, TARGET, coco_bbox_to_roi, preprocess, read_image,
)
from roiseg.errors import InputError
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)

DEFAULT_ATOL: float = PARITY_ATOL
DEFAULT_MIN_ARGMAX: float = PARITY_MIN_ARGMAX
REL_FLOOR: float = 1e-6
MANY_ROIS: int = 16
"""ROIs in the "many" set of each image (GT boxes + edge cases, topped up with plausible boxes)."""
LARGE_ROI_SET: int = 64
"""Size of the extra large ROI set run on the first image."""
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")

_HIST_SHIFT = 16
_HIST_BINS = 1 << (31 - _HIST_SHIFT)  # float32 bit patterns of values in [0, inf]


# --------------------------------------------------------------------------------------------
# Probe inputs
# --------------------------------------------------------------------------------------------
def smooth_image(input_hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    """[1, 3, H, W] float32 in [0, 1]: low-frequency colour noise (a stand-in for a photo)."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = input_hw
    coarse = rng.random((max(h // 16, 2), max(w // 16, 2), 3), dtype=np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(img, 0.0, 1.0).transpose(2, 0, 1)[None].astype(np.float32).copy()


def plausible_rois(n: int, seed: int = 0) -> np.ndarray:
    """[n, 4] normalised xyxy person-like boxes inside the image (width 0.08-0.5, height 0.2-0.9)."""
    rng = np.random.default_rng(seed)
    wh = np.stack([rng.uniform(0.08, 0.5, n), rng.uniform(0.2, 0.9, n)], axis=1)
    x1y1 = rng.uniform(0.0, 1.0, (n, 2)) * (1.0 - wh)
    return np.concatenate([x1y1, x1y1 + wh], axis=1).astype(np.float32)


def edge_case_rois(input_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Named normalised xyxy ROIs: touching each border, a few pixels wide, a few pixels tall, whole image."""
    h, w = input_hw
    thin_w, thin_h = 3.0 / w, 3.0 / h
    cases = {
        "left_border": [0.0, 0.30, 0.35, 0.80],
        "right_border": [0.60, 0.20, 1.0, 0.70],
        "top_border": [0.30, 0.0, 0.70, 0.40],
        "bottom_border": [0.25, 0.60, 0.60, 1.0],
        "thin_3px_wide": [0.50, 0.20, 0.50 + thin_w, 0.80],
        "thin_3px_tall": [0.20, 0.50, 0.80, 0.50 + thin_h],
        "whole_image": [0.0, 0.0, 1.0, 1.0],
    }
    return {k: np.asarray(v, dtype=np.float32) for k, v in cases.items()}


def probe_rois(base: np.ndarray, input_hw: tuple[int, int], n: int, seed: int = 0) -> np.ndarray:
    """``base`` boxes, then the edge cases, topped up with plausible boxes to ``n`` ROIs (at least).

    Returns [max(n, len(base) + number of edge cases), 4] normalised xyxy float32.
    """
    rois = [np.asarray(base, dtype=np.float32).reshape(-1, 4), np.stack(list(edge_case_rois(input_hw).values()))]
    have = sum(len(r) for r in rois)
    if have < n:
        rois.append(plausible_rois(n - have, seed=seed + 1))
    return np.concatenate(rois)


@dataclass
class ProbeImage:
    """One image to compare on: its name, the preprocessed input and its GT boxes (may be empty)."""

    name: str
    image: np.ndarray  # [1, 3, H, W] float32
    gt_rois: np.ndarray  # [K, 4] normalised xyxy


def coco_probe_images(
    annotations: str | Path, images_dir: str | Path, input_hw: tuple[int, int], preprocessing,
    max_images: int | None = None,
) -> Iterator[ProbeImage]:
    """Images with person (non-crowd) GT boxes from a COCO instances JSON (rules of ``prepare-coco``)."""
    from roiseg.data.coco import load_coco_json
    from roiseg.data.prepare import select_persons

    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise InputError(f"--images folder not found: {images_dir}")
    sel = select_persons(load_coco_json(annotations), annotations, images_dir)
    if not sel.images:
        raise InputError(f"{annotations}: no image with a person annotation has its file in {images_dir}")
    by_image = sel.by_image()
    for rec in sel.images[:max_images]:
        hw = (int(rec["height"]), int(rec["width"]))
        boxes = np.stack([coco_bbox_to_roi(a["bbox"], hw) for a in by_image[rec["id"]]])
        img = preprocess(read_image(images_dir / rec["file_name"]), input_hw, preprocessing)
        yield ProbeImage(rec["file_name"], img, np.clip(boxes, 0.0, 1.0))


def folder_probe_images(images_dir: str | Path, input_hw: tuple[int, int], preprocessing,
                        max_images: int | None = None) -> Iterator[ProbeImage]:
    """Every image file in a folder (sorted), with plausible boxes instead of GT."""
    files = sorted(p for p in Path(images_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    for i, p in enumerate(files[:max_images]):
        yield ProbeImage(p.name, preprocess(read_image(p), input_hw, preprocessing), plausible_rois(3, seed=i))


def roi_sets(probe: ProbeImage, input_hw: tuple[int, int], large: int = 0) -> list[np.ndarray]:
    """ROI sets run on one image: 1 ROI, ``MANY_ROIS`` (GT + edge cases) and, if ``large``, that many."""
    one = probe.gt_rois[:1] if len(probe.gt_rois) else plausible_rois(1)
    sets = [one, probe_rois(probe.gt_rois, input_hw, MANY_ROIS)]
    if large:
        sets.append(probe_rois(probe.gt_rois, input_hw, large, seed=7))
    return sets


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def class_map(probs: np.ndarray) -> np.ndarray:
    """[N, K, H, W] -> [N, H, W] int64 argmax over classes (first maximum wins, as ``np.argmax``)."""
    best = np.zeros((probs.shape[0], *probs.shape[2:]), dtype=np.int64)
    best_val = probs[:, 0].copy()
    for k in range(1, probs.shape[1]):
        better = probs[:, k] > best_val
        best[better] = k
        np.maximum(best_val, probs[:, k], out=best_val)
    return best


def _histogram(diff: np.ndarray) -> np.ndarray:
    """Counts of non-negative float32 ``diff`` per bin of its bit pattern's upper 16 bits.

    For non-negative floats the bit pattern orders like the value, so bin ``k`` covers
    ``[bits(k << 16), bits((k + 1) << 16))``: 7 mantissa bits, a relative bin width of 0.8 %.
    """
    keys = np.ascontiguousarray(diff, dtype=np.float32).view(np.int32) >> _HIST_SHIFT
    return np.bincount(keys.ravel(), minlength=_HIST_BINS)


def _bin_upper_edge(k: int) -> float:
    return float(np.array([(k + 1) << _HIST_SHIFT], dtype=np.int32).view(np.float32)[0])


@dataclass
class StageStats:
    """Running error statistics of one stage (:meth:`update` per batch, :meth:`result` at the end)."""

    name: str
    description: str
    probabilities: bool = True
    count: int = 0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    max_rel: float = 0.0
    max_ref: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(_HIST_BINS, dtype=np.int64))
    agree: int = 0
    pixels: int = 0
    inter: int = 0
    union: int = 0
    min_roi_iou: float = 1.0

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        """Add one comparison. For probabilities both are [N, K, H, W] (class axis 1)."""
        if ref.shape != got.shape:
            raise ValueError(f"stage {self.name}: shapes differ, reference {ref.shape} vs candidate {got.shape}")
        ref = np.asarray(ref, dtype=np.float32)
        diff = np.abs(np.asarray(got, dtype=np.float32) - ref)
        diff[~np.isfinite(diff)] = np.inf
        self.count += diff.size
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        self.sum_abs += float(diff.sum(dtype=np.float64))
        mag = np.abs(ref)
        self.max_rel = max(self.max_rel, float((diff / np.maximum(mag, REL_FLOOR)).max(initial=0.0)))
        self.max_ref = max(self.max_ref, float(mag.max(initial=0.0)))
        self.hist += _histogram(diff)
        if self.probabilities:
            self._update_classes(ref, np.asarray(got, dtype=np.float32))

    def _update_classes(self, ref: np.ndarray, got: np.ndarray) -> None:
        a, b = class_map(ref), class_map(got)  # [N, H, W]
        self.agree += int(np.count_nonzero(a == b))
        self.pixels += a.size
        ta, tb = (a == TARGET).reshape(len(a), -1), (b == TARGET).reshape(len(b), -1)
        inter = np.count_nonzero(ta & tb, axis=1)
        union = np.count_nonzero(ta | tb, axis=1)
        self.inter += int(inter.sum())
        self.union += int(union.sum())
        per_roi = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        self.min_roi_iou = min(self.min_roi_iou, float(per_roi.min(initial=1.0)))

    def p99(self) -> float:
        """Upper edge of the histogram bin holding the 99th percentile of the absolute error."""
        if not self.count:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self.hist), math.ceil(0.99 * self.count)))
        return min(_bin_upper_edge(k), self.max_abs)

    def result(self, atol: float, min_argmax: float) -> dict[str, Any]:
        """Report dict of the stage, ``passed`` included."""
        tol = atol * max(1.0, self.max_ref) if not self.probabilities else atol
        out: dict[str, Any] = {
            "description": self.description,
            "elements": self.count,
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / self.count if self.count else 0.0,
            "p99_abs": self.p99(),
            "max_rel": self.max_rel,
            "tolerance": tol,
        }
        passed = self.count > 0 and self.max_abs <= tol
        if self.probabilities:
            agree = self.agree / self.pixels if self.pixels else 0.0
            out.update({
                "argmax_agreement": agree,
                "target_iou": self.inter / self.union if self.union else 1.0,
                "min_roi_target_iou": self.min_roi_iou,
            })
            passed = passed and agree >= min_argmax
        else:
            out["max_abs_reference"] = self.max_ref
        out["passed"] = bool(passed)
        return out


def format_table(report: dict[str, Any]) -> str:
    """The per-stage table printed by ``roiseg parity-check``."""
    head = f"{'stage':<9} {'max abs':>9} {'mean abs':>9} {'p99 abs':>9} {'max rel':>9} {'argmax':>9} {'tgt IoU':>8}  result"
    lines = [head, "-" * len(head)]
    for name, st in report["stages"].items():
        if "skipped" in st:
            lines.append(f"{name:<9} {'skipped: ' + st['skipped']}")
            continue
        agree = f"{100 * st['argmax_agreement']:.4f}%" if "argmax_agreement" in st else "-"
        iou = f"{st['target_iou']:.5f}" if "target_iou" in st else "-"
        lines.append(
            f"{name:<9} {st['max_abs']:>9.2e} {st['mean_abs']:>9.2e} {st['p99_abs']:>9.2e} {st['max_rel']:>9.2e} "
            f"{agree:>9} {iou:>8}  {'PASS' if st['passed'] else 'FAIL'}"
        )
    lines.append(f"{report['images']} image(s), {report['roi_sets']} ROI set(s), {report['rois']} ROIs; "
                 f"atol {report['atol']:g}, argmax >= {100 * report['min_argmax']:.2f}%: "
                 f"{'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)


def failure_summary(report: dict[str, Any]) -> str:
    """One line naming each failed stage and what exceeded its limit."""
    parts = []
    for name, st in report["stages"].items():
        if st.get("passed", True):
            continue
        why = []
        if st["max_abs"] > st["tolerance"]:
            why.append(f"max abs {st['max_abs']:.3g} > {st['tolerance']:.3g}")
        if "argmax_agreement" in st and st["argmax_agreement"] < report["min_argmax"]:
            why.append(f"argmax agreement {100 * st['argmax_agreement']:.4f}% < {100 * report['min_argmax']:.2f}%")
        parts.append(f"{name}: {', '.join(why) or 'no elements compared'}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# The two paths
# --------------------------------------------------------------------------------------------
def exposed_feature_model(detector: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    """The original detector, unchanged, with ``tensor`` listed as an extra output.

    Every original output is kept (``trim_at_tensor(keep_original_outputs=True)``), so no node is
    removed: the features are computed by the original graph.
    """
    from graph_tools.trim import trim_at_tensor

    if tensor in {o.name for o in detector.graph.output}:
        return detector
    return trim_at_tensor(detector, tensor, keep_original_outputs=True)


class TorchPath:
    """Reference path: detector ONNX (onnxruntime) features -> head in torch -> [N, 3, H, W] probabilities."""

    def __init__(self, detector: onnx.ModelProto, tensor: str, head) -> None:
        self.tensor = tensor
        self.session = cpu_session(exposed_feature_model(detector, tensor))
        self.input_name = self.session.get_inputs()[0].name
        self.head = head.eval()

    def features(self, image: np.ndarray) -> np.ndarray:
        return self.session.run([self.tensor], {self.input_name: image})[0]

    @torch.no_grad()
    def masks(self, features: np.ndarray, image: np.ndarray, rois: np.ndarray) -> np.ndarray:
        r = torch.from_numpy(rois)
        idx = torch.zeros(len(r), dtype=torch.int64)
        return self.head.predict_masks(torch.from_numpy(features), r, idx, torch.from_numpy(image)).numpy()


# --------------------------------------------------------------------------------------------
# parity-check
# --------------------------------------------------------------------------------------------
def run_parity(
    yolo: str | Path,
    head: str | Path,
    fused: str | Path | None = None,
    annotations: str | Path | None = None,
    images: str | Path | None = None,
    atol: float = DEFAULT_ATOL,
    min_argmax: float = DEFAULT_MIN_ARGMAX,
    max_images: int | None = None,
    cut: str | None = None,
    large_set: int = LARGE_ROI_SET,
) -> dict[str, Any]:
    """Compare the fused model with the PyTorch path on real images; returns the report dict.

    Without ``fused`` the model is fused first (simplified) into a temporary folder. ``head`` must
    be a checkpoint (the PyTorch path needs the weights). ``annotations`` (COCO JSON) needs
    ``images``; with ``images`` alone every image in the folder is used with plausible boxes; with
    neither a synthetic image stands in (logged). ``large_set`` ROIs are run once, on the first image.
    """
    from graph_tools.fuse import build_fused, check_feeds, load_head_source
    from graph_tools.inspect import load_model
    from graph_tools.io import save_model
    from graph_tools.metadata import FusedMetadata, read_props, write_metadata
    from graph_tools.opset import default_opset
    from graph_tools.simplify import simplify_verified

    if annotations is not None and images is None:
        raise InputError("--annotations needs --images (the folder of the annotated image files)")
    source = load_head_source(head)
    if source.head is None:
        raise InputError(f"--head {head}: parity-check needs a checkpoint (the PyTorch path runs its weights)")
    with tempfile.TemporaryDirectory(prefix="roiseg_parity_") as tmp:
        if fused is None:
            build = build_fused(yolo, source, cut=cut)
            result = simplify_verified(build.model, check_feeds(build.meta))
            build.meta.simplified = result.simplified
            write_metadata(result.model, build.meta)
            fused = save_model(result.model, Path(tmp) / "fused.onnx")
            label = "temporary (fused from --yolo and --head)"
            LOG.info("fused %s + %s into a temporary file", Path(yolo).name, Path(head).name)
            fused_model, meta = load_model(fused), build.meta
        else:
            label = str(fused)
            fused_model = load_model(fused)
            meta = FusedMetadata.from_props(read_props(fused_model), fused)
            # The fused model's detector path and unsimplified form, rebuilt from the same inputs.
            build = build_fused(yolo, source, cut=meta.feature_tensor, opset=default_opset(fused_model))
            if meta.extractor_sha256 != build.meta.extractor_sha256:
                LOG.warning("%s was built from another detector file than --yolo %s (sha256 differs)", fused, yolo)
        reference = TorchPath(load_model(yolo), meta.feature_tensor, source.head)
        probes = _probe_images(meta, annotations, images, max_images)
        report = compare_paths(
            fused_model, build.detector, build.model if meta.simplified else None, reference, probes,
            meta.input_hw, atol, min_argmax, large_set,
        )
    report.update({
        "fused": label, "yolo": str(yolo), "head": str(head),
        "metadata": meta.summary(),
    })
    return report


def _probe_images(meta, annotations, images, max_images) -> list[ProbeImage]:
    if annotations is not None:
        return list(coco_probe_images(annotations, images, meta.input_hw, meta.preprocessing, max_images))
    if images is not None:
        return list(folder_probe_images(images, meta.input_hw, meta.preprocessing, max_images))
    LOG.warning("no --images given: comparing on a synthetic image only")
    return [ProbeImage("synthetic", smooth_image(meta.input_hw), plausible_rois(3))]


def compare_paths(
    fused: onnx.ModelProto,
    trimmed_detector: onnx.ModelProto,
    unsimplified: onnx.ModelProto | None,
    reference: TorchPath,
    probes: Sequence[ProbeImage],
    input_hw: tuple[int, int],
    atol: float = DEFAULT_ATOL,
    min_argmax: float = DEFAULT_MIN_ARGMAX,
    large_set: int = LARGE_ROI_SET,
) -> dict[str, Any]:
    """Run every stage on every probe image and ROI set; the report dict (see module docstring)."""
    fused_s = cpu_session(fused)
    trim_s = cpu_session(trimmed_detector)
    trim_in, trim_out = trim_s.get_inputs()[0].name, trim_s.get_outputs()[0].name
    unsimp_s = cpu_session(unsimplified) if unsimplified is not None else None
    stages = {
        "trim": StageStats("trim", "trimmed detector (fused model's detector path) vs the tensor inside the "
                           "original detector", probabilities=False),
        "simplify": StageStats("simplify", "simplified fused model vs unsimplified fused model"),
        "fused": StageStats("fused", "fused ONNX (onnxruntime) vs PyTorch path (detector ONNX features via "
                            "onnxruntime + head in torch)"),
    }
    n_sets = n_rois = 0
    for i, probe in enumerate(progress(probes, desc="parity", unit="img")):
        feats = reference.features(probe.image)
        stages["trim"].update(feats, trim_s.run([trim_out], {trim_in: probe.image})[0])
        for rois in roi_sets(probe, input_hw, large_set if i == 0 else 0):
            feeds = {DEFAULT_IMAGE_INPUT: probe.image, FUSED_ROIS_INPUT: np.ascontiguousarray(rois, np.float32)}
            got = fused_s.run(None, feeds)[0]
            stages["fused"].update(reference.masks(feats, probe.image, feeds[FUSED_ROIS_INPUT]), got)
            if unsimp_s is not None:
                stages["simplify"].update(unsimp_s.run(None, feeds)[0], got)
            n_sets += 1
            n_rois += len(rois)
    results = {name: st.result(atol, min_argmax) for name, st in stages.items()}
    if unsimp_s is None:
        results["simplify"] = {"skipped": "the fused model is not simplified", "passed": True}
    return {
        "atol": atol, "min_argmax": min_argmax, "images": len(probes), "roi_sets": n_sets, "rois": n_rois,
        "image_names": [p.name for p in probes], "stages": results,
        "passed": all(r["passed"] for r in results.values()),
    }
