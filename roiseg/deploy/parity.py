"""Parity between the fused ONNX model and the PyTorch path, stage by stage.

Stages (each compares a candidate with a reference on the same inputs):

* ``trim``: the trimmed detector inside the fused model (after any opset conversion) vs the feature
  tensor inside the *original* detector (exposed as an extra output, nothing else changed);
  onnxruntime on both sides.
* ``simplify``: the simplified fused model vs the unsimplified one (skipped when not simplified).
* An instance model (``fuse --instances``) is checked by
  :func:`roiseg.deploy.instances_parity.run_instance_parity` instead (detections vs the Python reference,
  masks vs the ROI model built here).
* ``fused``: the fused model in onnxruntime vs the PyTorch path: features from the original
  detector ONNX through onnxruntime, then the head in torch (:func:`roiseg.deploy.export.deployed_masks`:
  the same ROI sanitising as the graph), same preprocessing. The first image also runs the contract's
  ROI sets (zero ROIs; boxes outside, reversed, non-finite).

Per stage (:class:`graph_tools.ErrorStats`): max, mean and p99 absolute error, max relative error
``|got - ref| / max(|ref|, 1e-6)``, and for probability maps the fraction of pixels whose argmax
class agrees and the IoU of the target masks (argmax == target) pooled over all ROIs. Errors are
taken over every output element (all ROIs, classes and pixels).

The fused model and its stages come from the one build pipeline (:mod:`roiseg.deploy.fuse`):
without a fused file it is built here exactly as ``fuse`` builds it; with one, the detector path
and the unsimplified model are rebuilt with that file's feature tensor and opset.

A stage passes when ``max abs <= atol`` (for ``trim``: ``atol * max(1, max |features|)``, since
features are not bounded like probabilities) and argmax agreement ``>= min_argmax``. A float16
model (``roiseg fuse --fp16``) is held to float16 tolerances by default (:func:`parity_tolerances`):
mean abs ``<= 1e-2``, argmax agreement ``>= 98 %``, no bound on the largest error; its ``simplify``
stage is skipped (the ``fused`` stage covers the whole file) and ``trim`` keeps the float32 tolerance.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
import torch

import graph_tools as gt
from graph_tools import ErrorStats
from roiseg.conventions import (
    DEFAULT_IMAGE_INPUT, PREPROCESSED_TENSOR, RAW_IMAGE_INPUT, Preprocessing, preprocess, FP16_PARITY_ATOL, FP16_PARITY_MEAN_ATOL, FP16_PARITY_MIN_ARGMAX, FUSED_LABELS_OUTPUT, FUSED_MASKS_OUTPUT, FUSED_ROIS_INPUT, PARITY_ATOL, PARITY_MIN_ARGMAX,
    TARGET,
)
from roiseg.deploy.engines import ENGINES, engine_session
from roiseg.deploy.export import deployed_outputs, output_tensors
from roiseg.deploy.fuse import build_fused, contract_roi_sets, finish_fused
from roiseg.deploy.head_source import load_head_source
from roiseg.deploy.instances_parity import run_instance_parity
from roiseg.deploy.metadata import read_metadata
from roiseg.deploy.raw_input import RAW_PREPROCESS_ATOL, raw_from_tensor
from roiseg.deploy.probes import (
    ProbeImage, coco_probe_images, folder_probe_images, plausible_rois, roi_sets, smooth_image,
)
from roiseg.errors import InputError, translate_graph_errors
from roiseg.utils.progress import get_logger, progress

LOG = get_logger(__name__)

COMPARE_CHUNK: int = 16
"""ROIs compared at a time (PyTorch path and statistics): bounds the peak memory of large ROI sets."""
LARGE_ROI_SET: int = 64
"""Size of the extra large ROI set run on the first image."""


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
        if st.get("kind") == "labels":  # class ids: agreement and IoU only
            lines.append(f"{name:<9} {'-':>9} {'-':>9} {'-':>9} {'-':>9} {agree:>9} {iou:>8}  "
                         f"{'PASS' if st['passed'] else 'FAIL'}")
            continue
        lines.append(
            f"{name:<9} {st['max_abs']:>9.2e} {st['mean_abs']:>9.2e} {st['p99_abs']:>9.2e} {st['max_rel']:>9.2e} "
            f"{agree:>9} {iou:>8}  {'PASS' if st['passed'] else 'FAIL'}"
        )
    mean = f", mean abs <= {report['mean_atol']:g}" if report.get("mean_atol") is not None else ""
    fp16 = " (float16 model)" if report.get("fp16") else ""
    fp16 += f" on {report['engine']}" if report.get("engine", "onnxruntime") != "onnxruntime" else ""
    lines.append(f"{report['images']} image(s), {report['roi_sets']} ROI set(s), {report['rois']} ROIs; "
                 f"atol {report['atol']:g}{mean}, argmax >= {100 * report['min_argmax']:.2f}%{fp16}: "
                 f"{'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)


def failure_summary(report: dict[str, Any]) -> str:
    """One line naming each failed stage and what exceeded its limit."""
    parts = []
    for name, st in report["stages"].items():
        if st.get("passed", True):
            continue
        why = []
        if "tolerance" in st and st["max_abs"] > st["tolerance"]:
            why.append(f"max abs {st['max_abs']:.3g} > {st['tolerance']:.3g}")
        if "mean_tolerance" in st and st["mean_abs"] > st["mean_tolerance"]:
            why.append(f"mean abs {st['mean_abs']:.3g} > {st['mean_tolerance']:.3g}")
        if "argmax_agreement" in st and st["argmax_agreement"] < report["min_argmax"]:
            why.append(f"argmax agreement {100 * st['argmax_agreement']:.4f}% < {100 * report['min_argmax']:.2f}%")
        parts.append(f"{name}: {', '.join(why) or 'no elements compared'}")
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# The two paths
# --------------------------------------------------------------------------------------------
def stage_name(output: str) -> str:
    """The parity stage of a fused output tensor: ``fused`` for ``masks`` (probabilities), else its name."""
    return "fused" if output == FUSED_MASKS_OUTPUT else output


def output_stages(names: Sequence[str]) -> dict[str, ErrorStats]:
    """One stage per output tensor of the fused model against the PyTorch path."""
    what = "fused ONNX (onnxruntime) vs PyTorch path (detector ONNX features via onnxruntime + head in torch)"
    stages = {}
    for name in names:
        kind = {"probabilities": name == FUSED_MASKS_OUTPUT, "labels": name == FUSED_LABELS_OUTPUT}
        stages[stage_name(name)] = ErrorStats(stage_name(name), f"{what}: {name}", positive_class=TARGET, **kind)
    return stages


def exposed_feature_model(detector: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """The original detector, unchanged, with ``tensors`` listed as extra outputs.

    Every original output is kept (``trim_at_tensor(keep_original_outputs=True)``), so no node is
    removed: the features are computed by the original graph.
    """
    if set(tensors) <= {o.name for o in detector.graph.output}:
        return detector
    return gt.trim_at_tensor(detector, list(tensors), keep_original_outputs=True)


class TorchPath:
    """Reference path: detector ONNX (onnxruntime) taps -> head in torch -> [N, 3, H, W] probabilities."""

    def __init__(self, detector: onnx.ModelProto, tensors: Sequence[str], head) -> None:
        self.tensors = list(tensors)
        self.session = gt.create_session(exposed_feature_model(detector, self.tensors), arena=False)
        self.input_name = self.session.get_inputs()[0].name
        self.head = head.eval()

    def features(self, image: np.ndarray) -> list[np.ndarray]:
        """Every tap of the original detector for one preprocessed image, primary first."""
        return self.session.run(self.tensors, {self.input_name: image})

    @torch.no_grad()
    def outputs(self, features: Sequence[np.ndarray], image: np.ndarray, rois: np.ndarray,
                modes: Sequence[str] = ("probs",), out_hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """``{output tensor name: array}`` of the ``modes`` as the fused model computes them (masks
        pasted at ``out_hw``, default the input size)."""
        taps = [torch.from_numpy(f) for f in features]
        got = deployed_outputs(self.head, taps if len(taps) > 1 else taps[0], torch.from_numpy(rois),
                               torch.from_numpy(image), tuple(modes), out_hw)
        return {name: t.numpy() for name, t in zip(output_tensors(modes), got)}

    def masks(self, features: Sequence[np.ndarray], image: np.ndarray, rois: np.ndarray) -> np.ndarray:
        """[N, 3, H, W] probabilities (the ``probs`` mode)."""
        return self.outputs(features, image, rois)[FUSED_MASKS_OUTPUT]


class RawPath:
    """A raw-image model's side of parity: its own preprocessing (the graph cut at the preprocessed
    tensor) and the original image of each probe."""

    def __init__(self, fused: onnx.ModelProto, pre: Preprocessing, input_hw: tuple[int, int]) -> None:
        self.pre, self.input_hw = pre, input_hw
        self.session = gt.create_session(gt.trim_at_tensor(fused, [PREPROCESSED_TENSOR]))

    def inputs(self, probe: ProbeImage, stats: ErrorStats) -> tuple[np.ndarray, dict[str, np.ndarray], tuple[int, int]]:
        """(the graph's preprocessed image, the fused model's image feed, the original size); adds the
        preprocessing comparison to ``stats``."""
        raw = probe.raw if probe.raw is not None else raw_from_tensor(probe.image, self.pre)
        graph = self.session.run(None, {RAW_IMAGE_INPUT: raw})[0].astype(np.float32)
        stats.update(preprocess(raw, self.input_hw, self.pre), graph)
        return graph, {RAW_IMAGE_INPUT: raw}, (int(raw.shape[0]), int(raw.shape[1]))


# --------------------------------------------------------------------------------------------
# parity-check
# --------------------------------------------------------------------------------------------
@translate_graph_errors
def run_parity(
    detector: str | Path,
    head: str | Path,
    fused: str | Path | None = None,
    annotations: str | Path | None = None,
    images: str | Path | None = None,
    atol: float | None = None,
    min_argmax: float | None = None,
    max_images: int | None = None,
    feature_tensor: str | None = None,
    large_set: int = LARGE_ROI_SET,
    mean_atol: float | None = None,
    engine: str = "onnxruntime",
) -> dict[str, Any]:
    """Compare the fused model with the PyTorch path on real images; returns the report dict.

    Without ``fused`` the model is built (simplified) as ``fuse`` builds it, in a temporary folder.
    ``head`` must be a checkpoint (the PyTorch path needs the weights). ``annotations`` (COCO JSON)
    needs ``images``; with ``images`` alone every image in the folder is used with plausible
    boxes; with neither a synthetic image stands in (logged). ``large_set`` ROIs are run once, on
    the first image. Tolerances left ``None`` follow the model's precision (:func:`parity_tolerances`).
    ``engine``: what runs the fused model, ``onnxruntime`` or ``openvino`` (CPU, f32 precision).
    """
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "openvino" and importlib.util.find_spec("openvino") is None:
        raise InputError("OpenVINO is not installed; it is the optional dependency group 'openvino' (uv sync --group openvino)")
    if annotations is not None and images is None:
        raise InputError("annotations need the folder of the annotated image files (images)")
    if fused is not None and read_metadata(fused).instances:
        return run_instance_parity(detector, head, fused, annotations, images, max_images, atol, engine)
    source = load_head_source(head)
    if source.head is None:
        raise InputError(f"head {head}: parity needs a checkpoint (the PyTorch path runs its weights)")
    with tempfile.TemporaryDirectory(prefix="roiseg_parity_") as tmp:
        if fused is None:
            build = build_fused(detector, source, feature_tensor=feature_tensor)
            model, _ = finish_fused(build)
            fused_path = gt.save_model(model, Path(tmp) / "fused.onnx")
            label = "temporary (built from the detector and the head as fuse builds it)"
        else:
            fused_path, label = Path(fused), str(fused)
            file_meta = read_metadata(fused_path)
            opset = gt.default_opset(gt.load_model(fused_path, load_external_data=False))
            build = build_fused(detector, source, feature_tensor=file_meta.feature_tensor, opset=opset,
                                outputs=file_meta.outputs, image_input=file_meta.image_input)
            if file_meta.extractor_sha256 != build.meta.extractor_sha256:
                LOG.warning("%s was built from another detector file than %s (sha256 differs)", fused, detector)
        fused_model = gt.load_model(fused_path)
        meta = read_metadata(fused_model)
        reference = TorchPath(gt.load_model(detector), [meta.feature_tensor, *meta.extra_tensors], source.head)
        probes, n_probes = _probe_images(meta, annotations, images, max_images)
        tol = parity_tolerances(meta.fp16, atol, min_argmax, mean_atol)
        unsimplified = build.model if meta.simplified and not meta.fp16 else None
        report = compare_paths(fused_model, build.detector, unsimplified, reference, probes, meta.input_hw,
                               n_probes=n_probes, large_set=large_set, modes=meta.outputs, fp16=meta.fp16, **tol,
                               raw_pre=meta.preprocessing if meta.image_input == "raw" else None, engine=engine)
    report.update({"fused": label, "detector": str(detector), "head": str(head), "metadata": meta.summary()})
    return report


def parity_tolerances(fp16: bool, atol: float | None = None, min_argmax: float | None = None,
                      mean_atol: float | None = None) -> dict[str, float | None]:
    """``atol``, ``min_argmax``, ``mean_atol``: the ones given, the others by precision.

    float32: max abs ``PARITY_ATOL`` (1e-4), argmax ``PARITY_MIN_ARGMAX`` (99.99 %), no mean bound.
    float16: max abs ``FP16_PARITY_ATOL`` (1.0, i.e. none), mean abs ``FP16_PARITY_MEAN_ATOL`` (1e-2),
    argmax ``FP16_PARITY_MIN_ARGMAX`` (98 %).
    """
    if fp16:
        defaults = (FP16_PARITY_ATOL, FP16_PARITY_MIN_ARGMAX, FP16_PARITY_MEAN_ATOL)
    else:
        defaults = (PARITY_ATOL, PARITY_MIN_ARGMAX, None)
    given = (atol, min_argmax, mean_atol)
    return dict(zip(("atol", "min_argmax", "mean_atol"), (g if g is not None else d for g, d in zip(given, defaults))))


def _probe_images(meta, annotations, images, max_images) -> tuple[Iterable[ProbeImage], int]:
    """The probe images, read one at a time as the comparison reaches them, and how many there are."""
    if annotations is not None:
        probes = coco_probe_images(annotations, images, meta.input_hw, meta.preprocessing, max_images)
    elif images is not None:
        probes = folder_probe_images(images, meta.input_hw, meta.preprocessing, max_images)
    else:
        LOG.warning("no --images given: comparing on a synthetic image only")
        return [ProbeImage("synthetic", smooth_image(meta.input_hw), plausible_rois(3))], 1
    return probes, len(probes)


def compare_paths(
    fused: onnx.ModelProto,
    trimmed_detector: onnx.ModelProto,
    unsimplified: onnx.ModelProto | None,
    reference: TorchPath,
    probes: Iterable[ProbeImage],
    input_hw: tuple[int, int],
    n_probes: int | None = None,
    atol: float = PARITY_ATOL,
    min_argmax: float = PARITY_MIN_ARGMAX,
    large_set: int = LARGE_ROI_SET,
    modes: Sequence[str] = ("probs",),
    mean_atol: float | None = None,
    fp16: bool = False,
    raw_pre: Preprocessing | None = None,
    engine: str = "onnxruntime",
) -> dict[str, Any]:
    """Run every stage on every probe image and ROI set; the report dict (see module docstring).

    ``modes``: the fused model's output modes; each output tensor has its stage (``probs``: ``fused``).
    ``raw_pre``: the preprocessing of a raw-image model (``None`` for a tensor-input model): it gets
    the original image, a ``preprocess`` stage compares its in-graph preprocessing with
    ``conventions.preprocess`` (one grey level, ``RAW_PREPROCESS_ATOL``), and the PyTorch path runs
    on the graph's preprocessed image with the masks pasted at the original size. ``engine`` runs
    the fused model (and the unsimplified one): ``onnxruntime`` or ``openvino`` (CPU, f32).
    """
    raw = RawPath(fused, raw_pre, input_hw) if raw_pre is not None else None
    fused_s = engine_session(engine, fused, arena=False)  # no arena: the 64-ROI set must not stay resident
    trim_s = gt.create_session(trimmed_detector, arena=False)
    trim_in = trim_s.get_inputs()[0].name
    unsimp_s = engine_session(engine, unsimplified, arena=False) if unsimplified is not None else None
    names = output_tensors(modes)
    stages = {
        "trim": ErrorStats("trim", "trimmed detector (fused model's detector path) vs the tensor inside the "
                           "original detector", probabilities=False),
        "simplify": ErrorStats("simplify", f"simplified fused model vs unsimplified fused model ({names[0]})",
                               positive_class=TARGET, probabilities=names[0] == FUSED_MASKS_OUTPUT,
                               labels=names[0] == FUSED_LABELS_OUTPUT),
        **output_stages(names),
    }
    if raw is not None:
        stages["preprocess"] = ErrorStats("preprocess", "in-graph preprocessing of the raw image vs "
                                          "conventions.preprocess", probabilities=False)
    n_sets = n_rois = 0
    image_names = []
    for i, probe in enumerate(progress(probes, desc="parity", total=n_probes, unit="img")):
        image_names.append(probe.name)
        feats = reference.features(probe.image)
        for ref, got in zip(feats, trim_s.run(reference.tensors, {trim_in: probe.image})):
            stages["trim"].update(ref, got)
        image, image_feed, out_hw = probe.image, {DEFAULT_IMAGE_INPUT: probe.image}, None
        if raw is not None:
            image, image_feed, out_hw = raw.inputs(probe, stages["preprocess"])
            feats = reference.features(image)
        sets = roi_sets(probe, input_hw, large_set if i == 0 else 0) + (contract_roi_sets() if i == 0 else [])
        for rois in sets:
            compare_set(stages, names, fused_s, unsimp_s, reference, feats, image, image_feed, rois, modes, out_hw)
            n_sets += 1
            n_rois += len(rois)
    fixed = {"trim": PARITY_ATOL if fp16 else atol, "preprocess": RAW_PREPROCESS_ATOL + (1e-3 if fp16 else 0.0)}
    results = {name: st.result(atol, min_argmax, mean_atol) for name, st in stages.items() if name not in fixed}
    results = {**{k: stages[k].result(fixed[k], min_argmax) for k in fixed if k in stages}, **results}
    if unsimp_s is None:
        why = "float16 model: the fused stage covers the whole file" if fp16 else "the fused model is not simplified"
        results["simplify"] = {"skipped": why, "passed": True}
    return {
        "atol": atol, "min_argmax": min_argmax, "mean_atol": mean_atol, "fp16": fp16, "engine": engine, "images": len(image_names), "roi_sets": n_sets, "rois": n_rois,
        "image_names": image_names, "stages": results,
        "passed": all(r["passed"] for r in results.values()),
    }


def compare_set(stages: dict[str, ErrorStats], names: Sequence[str], fused_s, unsimp_s, reference: TorchPath,
                feats: Sequence[np.ndarray], image: np.ndarray, image_feed: dict[str, np.ndarray], rois: np.ndarray,
                modes: Sequence[str], out_hw: tuple[int, int] | None) -> None:
    """Run one ROI set ([N, 4] normalised x1y1x2y2) through the fused model once, then compare it with
    the PyTorch path and the unsimplified model (``unsimp_s``, may be ``None``) ``COMPARE_CHUNK`` ROIs
    at a time (a ROI's output does not depend on the others), updating ``stages``."""
    feeds = {**image_feed, FUSED_ROIS_INPUT: np.ascontiguousarray(rois, np.float32)}
    got = dict(zip(names, fused_s.run(names, feeds)))
    for lo in range(0, max(len(rois), 1), COMPARE_CHUNK):
        part = feeds[FUSED_ROIS_INPUT][lo:lo + COMPARE_CHUNK]
        want = reference.outputs(feats, image, part, modes, out_hw)
        for name in names:
            stages[stage_name(name)].update(want[name], got[name][lo:lo + COMPARE_CHUNK])
        del want
        if unsimp_s is not None:
            ref = unsimp_s.run(names[:1], {**feeds, FUSED_ROIS_INPUT: part})[0]
            stages["simplify"].update(ref, got[names[0]][lo:lo + COMPARE_CHUNK])
