"""Parity of a ROI model: the fused ONNX model vs the PyTorch path, stage by stage (:class:`RoiStages`).

Stages (each compares a candidate with a reference on the same inputs):

* ``trim``: the trimmed detector inside the fused model (after any opset conversion) vs the feature
  tensor inside the *original* detector (exposed as an extra output, nothing else changed);
  onnxruntime on both sides.
* ``simplify``: the simplified fused model vs the unsimplified one (skipped when not simplified).
* ``fused``: the fused model in onnxruntime vs the PyTorch path: features from the original
  detector ONNX through onnxruntime, then the head in torch (:func:`roiseg.export.wrapper.deployed_roi_logits` on
  the whole ROI set, then :func:`~roiseg.export.wrapper.outputs_from_logits` a chunk at a time:
  the same ROI sanitising as the graph), same preprocessing. The first image also runs the contract's
  ROI sets (zero ROIs; boxes outside, reversed, non-finite).

Per stage (:class:`graph_tools.ErrorStats`): max, mean and p99 absolute error, max relative error
``|got - ref| / max(|ref|, 1e-6)``, and for probability maps the fraction of pixels whose argmax
class agrees and the IoU of the target masks (argmax == target) pooled over all ROIs. Errors are
taken over every output element (all ROIs, classes and pixels).

The fused model and its stages come from the one build pipeline (:mod:`roiseg.export.fuse`):
without a fused file it is built here exactly as ``fuse`` builds it; with one, the detector path
and the unsimplified model are rebuilt with that file's feature tensor and opset
(:func:`roiseg.verify.rebuild.rebuild_reference`).

A stage passes when ``max abs <= atol`` (for ``trim``: ``atol * max(1, max |features|)``, since
features are not bounded like probabilities) and argmax agreement ``>= min_argmax``. A float16
model (``roiseg fuse --fp16``) is held to float16 tolerances by default (:mod:`roiseg.verify.tolerances`):
mean abs ``<= 1e-2``, argmax agreement ``>= 98 %``, no bound on the largest error; its ``simplify``
stage is skipped (the ``fused`` stage covers the whole file) and ``trim`` keeps the float32 tolerance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import onnx
import torch

import graph_tools as gt
from graph_tools import ErrorStats
from roiseg.conventions import (
    DEFAULT_IMAGE_INPUT, FUSED_MASKS_OUTPUT, FUSED_ROIS_INPUT, PREPROCESSED_TENSOR, RAW_IMAGE_INPUT, ImageInput,
    Preprocessing, output_tensors, preprocess,
)
from roiseg.errors import InputError
from roiseg.export.fuse import build_fused, finish_fused
from roiseg.export.head_source import HeadSource
from roiseg.export.options import FuseOptions
from roiseg.export.probes import (
    ProbeImage, coco_probe_images, contract_roi_sets, folder_probe_images, plausible_rois, roi_sets, smooth_image,
)
from roiseg.export.raw_input import raw_from_tensor
from roiseg.export.wrapper import deployed_roi_logits, outputs_from_logits
from roiseg.runtime.engines import engine_session
from roiseg.runtime.metadata import FusedMetadata, read_metadata
from roiseg.utils.progress import get_logger, progress
from roiseg.verify.int8 import int8_parity
from roiseg.verify.rebuild import exposed_detector, rebuild_reference
from roiseg.verify.stats import output_stats, stage_result, value_stats
from roiseg.verify.table import Column, format_rows, verdict
from roiseg.verify.tolerances import PARITY_ATOL, Tolerances

LOG = get_logger(__name__)

COMPARE_CHUNK: int = 16
"""ROIs compared at a time (PyTorch path and statistics): bounds the peak memory of large ROI sets."""
LARGE_ROI_SET: int = 64
"""Size of the extra large ROI set run on the first image."""


def stage_name(output: str) -> str:
    """The parity stage of a fused output tensor: ``fused`` for ``masks`` (probabilities), else its name."""
    return "fused" if output == FUSED_MASKS_OUTPUT else output


class TorchPath:
    """Reference path: detector ONNX (onnxruntime) taps -> head in torch -> [N, 3, H, W] probabilities."""

    def __init__(self, detector: str | Path | onnx.ModelProto, tensors: Sequence[str], head: torch.nn.Module) -> None:
        self.tensors = list(tensors)
        self.session = gt.create_session(exposed_detector(detector, self.tensors), arena=False)
        self.input_name = self.session.get_inputs()[0].name
        self.head = head.eval()

    def features(self, image: np.ndarray) -> list[np.ndarray]:
        """Every tap of the original detector for one preprocessed image, primary first."""
        return self.session.run(self.tensors, {self.input_name: image})

    @torch.no_grad()
    def roi_logits(self, features: Sequence[np.ndarray], image: np.ndarray,
                   rois: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The head on the whole ROI set (a ROI may read the others): ([N, 3, M, M] logits, [N, 4] sanitised
        boxes, [N] finite), for :meth:`paste`."""
        taps = [torch.from_numpy(f) for f in features]
        return deployed_roi_logits(self.head, taps if len(taps) > 1 else taps[0], torch.from_numpy(rois),
                                   torch.from_numpy(image))

    @torch.no_grad()
    def paste(self, computed: tuple[torch.Tensor, torch.Tensor, torch.Tensor], modes: Sequence[str] = ("probs",),
              out_hw: tuple[int, int] | None = None, part: slice | None = None) -> dict[str, np.ndarray]:
        """``{output tensor name: array}`` of the ``modes`` as the fused model computes them, for the ROIs in
        ``part`` (default all) of :meth:`roi_logits`' set (masks pasted at ``out_hw``, default the input size)."""
        part = part or slice(None)
        logits, boxes, valid = (t[part] for t in computed)
        got = outputs_from_logits(self.head, logits, boxes, valid, tuple(modes), out_hw)
        return {name: t.numpy() for name, t in zip(output_tensors(modes), got)}

    def outputs(self, features: Sequence[np.ndarray], image: np.ndarray, rois: np.ndarray,
                modes: Sequence[str] = ("probs",), out_hw: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """:meth:`paste` of every ROI of :meth:`roi_logits`."""
        return self.paste(self.roi_logits(features, image, rois), modes, out_hw)

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


def _fmt(st: dict[str, Any], key: str, spec: str) -> str:
    return "-" if st.get("kind") == "labels" else format(st[key], spec)


class RoiStages:
    """The stages of a ROI model's parity (module docstring), fed one ROI set at a time (:meth:`add_set`)."""

    KIND = "roi"
    COLUMNS = (
        Column("stage", 9, lambda st: st["name"], left=True), Column("max abs", 9, lambda st: _fmt(st, "max_abs", ".2e")),
        Column("mean abs", 9, lambda st: _fmt(st, "mean_abs", ".2e")),
        Column("p99 abs", 9, lambda st: _fmt(st, "p99_abs", ".2e")),
        Column("max rel", 9, lambda st: _fmt(st, "max_rel", ".2e")),
        Column("argmax", 9, lambda st: f"{100 * st['argmax_agreement']:.4f}%" if "argmax_agreement" in st else "-"),
        Column("tgt IoU", 8, lambda st: f"{st['target_iou']:.5f}" if "target_iou" in st else "-"),
        Column("result", 0, lambda st: verdict(st["passed"]), gap=2),
    )

    def __init__(self, fused: onnx.ModelProto, trimmed: onnx.ModelProto, unsimplified: onnx.ModelProto | None,
                 reference: TorchPath, modes: Sequence[str], raw_pre: Preprocessing | None, input_hw: tuple[int, int],
                 engine: str = "onnxruntime") -> None:
        self.reference, self.modes, self.names = reference, tuple(modes), output_tensors(modes)
        self.raw = RawPath(fused, raw_pre, input_hw) if raw_pre is not None else None
        self.fused = engine_session(engine, fused, arena=False)  # no arena: the 64-ROI set must not stay resident
        self.trim = gt.create_session(trimmed, arena=False)
        self.unsimplified = engine_session(engine, unsimplified, arena=False) if unsimplified is not None else None
        what = "fused ONNX (onnxruntime) vs PyTorch path (detector ONNX features via onnxruntime + head in torch)"
        self.stages: dict[str, ErrorStats] = {
            "trim": value_stats("trim", "trimmed detector (fused model's detector path) vs the tensor inside the "
                                "original detector"),
            "simplify": output_stats("simplify", f"simplified fused model vs unsimplified fused model ({self.names[0]})",
                                     self.names[0]),
            **{stage_name(n): output_stats(stage_name(n), f"{what}: {n}", n) for n in self.names},
        }
        if self.raw is not None:
            self.stages["preprocess"] = value_stats("preprocess", "in-graph preprocessing of the raw image vs "
                                                    "conventions.preprocess")
        self.n_sets = self.n_rois = 0

    def image(self, probe: ProbeImage, sets: Sequence[np.ndarray]) -> None:
        """Compare one probe image: the ``trim`` stage, then every ROI set ([N, 4] normalised x1y1x2y2)."""
        feats = self.reference.features(probe.image)
        for ref, got in zip(feats, self.trim.run(self.reference.tensors, {self.trim.get_inputs()[0].name: probe.image})):
            self.stages["trim"].update(ref, got)
        image, image_feed, out_hw = probe.image, {DEFAULT_IMAGE_INPUT: probe.image}, None
        if self.raw is not None:
            image, image_feed, out_hw = self.raw.inputs(probe, self.stages["preprocess"])
            feats = self.reference.features(image)
        for rois in sets:
            self.add_set(feats, image, image_feed, rois, out_hw)

    def add_set(self, feats: Sequence[np.ndarray], image: np.ndarray, image_feed: dict[str, np.ndarray],
                rois: np.ndarray, out_hw: tuple[int, int] | None) -> None:
        """Run one ROI set through the fused model once, then compare it with the PyTorch path
        ``COMPARE_CHUNK`` ROIs at a time (the head runs on the whole set, since a ROI may read the others;
        only each chunk is pasted). The unsimplified model gets the same set when it fits one chunk; a larger
        set is compared chunk by chunk as sets of their own, on both graphs (the same input to both)."""
        feeds = {**image_feed, FUSED_ROIS_INPUT: np.ascontiguousarray(rois, np.float32)}
        got = dict(zip(self.names, self.fused.run(self.names, feeds)))
        computed = self.reference.roi_logits(feats, image, feeds[FUSED_ROIS_INPUT])
        for lo in range(0, max(len(rois), 1), COMPARE_CHUNK):
            part = slice(lo, lo + COMPARE_CHUNK)
            want = self.reference.paste(computed, self.modes, out_hw, part)
            for name in self.names:
                self.stages[stage_name(name)].update(want[name], got[name][part])
            del want
            if self.unsimplified is not None:
                self._compare_simplified(feeds, got[self.names[0]], part)
        self.n_sets += 1
        self.n_rois += len(rois)

    def _compare_simplified(self, feeds: dict[str, np.ndarray], got: np.ndarray, part: slice) -> None:
        """The ``simplify`` stage for the ROIs in ``part`` of the set in ``feeds`` (``got``: the fused model's
        first output for the whole set)."""
        rois = feeds[FUSED_ROIS_INPUT]
        if len(rois) > COMPARE_CHUNK:  # the chunk as a set of its own, on both graphs
            feeds = {**feeds, FUSED_ROIS_INPUT: rois[part]}
            got, part = self.fused.run(self.names[:1], feeds)[0], slice(None)
        ref = self.unsimplified.run(self.names[:1], feeds)[0]
        self.stages["simplify"].update(ref[part], got[part])

    def report(self, tol: Tolerances, fp16: bool, engine: str, image_names: list[str]) -> dict[str, Any]:
        """Every stage's result and ``passed``; ``trim`` and ``preprocess`` keep their own tolerances."""
        fixed = {"trim": PARITY_ATOL if fp16 else tol.atol, "preprocess": tol.preprocess_atol(fp16)}
        results = {k: stage_result(self.stages[k], fixed[k], tol.min_argmax) for k in fixed if k in self.stages}
        results.update({name: stage_result(st, tol.atol, tol.min_argmax, tol.mean_atol)
                        for name, st in self.stages.items() if name not in fixed})
        if self.unsimplified is None:
            why = "float16 model: the fused stage covers the whole file" if fp16 else "the fused model is not simplified"
            results["simplify"] = {"skipped": why, "passed": True}
        return {"kind": self.KIND, "atol": tol.atol, "min_argmax": tol.min_argmax, "mean_atol": tol.mean_atol,
                "fp16": fp16, "engine": engine, "images": len(image_names), "roi_sets": self.n_sets, "rois": self.n_rois,
                "image_names": image_names, "stages": results, "passed": all(r["passed"] for r in results.values())}

    @classmethod
    def table(cls, report: dict[str, Any]) -> str:
        """The per-stage table printed by ``roiseg parity-check``."""
        rows = [f"{name:<9} skipped: {st['skipped']}" if "skipped" in st else {**st, "name": name}
                for name, st in report["stages"].items()]
        mean = f", mean abs <= {report['mean_atol']:g}" if report.get("mean_atol") is not None else ""
        fp16 = " (float16 model)" if report.get("fp16") else ""
        fp16 += f" on {report['engine']}" if report.get("engine", "onnxruntime") != "onnxruntime" else ""
        footer = [f"{report['images']} image(s), {report['roi_sets']} ROI set(s), {report['rois']} ROIs; "
                  f"atol {report['atol']:g}{mean}, argmax >= {100 * report['min_argmax']:.2f}%{fp16}: "
                  f"{verdict(report['passed'])}"]
        return format_rows(cls.COLUMNS, rows, footer)

    @staticmethod
    def failures(report: dict[str, Any]) -> str:
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


def probe_images(meta: FusedMetadata, annotations: str | Path | None, images: str | Path | None,
                 max_images: int | None) -> tuple[Iterable[ProbeImage], int]:
    """The probe images, read one at a time as the comparison reaches them, and how many there are."""
    if annotations is not None:
        probes = coco_probe_images(annotations, images, meta.input_hw, meta.preprocessing, max_images)
    elif images is not None:
        probes = folder_probe_images(images, meta.input_hw, meta.preprocessing, max_images)
    else:
        LOG.warning("no --images given: comparing on a synthetic image only")
        return [ProbeImage("synthetic", smooth_image(meta.input_hw), plausible_rois(3))], 1
    return probes, len(probes)


def compare_paths(stages: RoiStages, probes: Iterable[ProbeImage], input_hw: tuple[int, int],
                  n_probes: int | None = None, large_set: int = LARGE_ROI_SET) -> list[str]:
    """Run every probe image and its ROI sets through ``stages`` (the first image also the ``large_set``
    and the robust contract's sets); the names of the images compared."""
    names = []
    for i, probe in enumerate(progress(probes, desc="parity", total=n_probes, unit="img")):
        names.append(probe.name)
        stages.image(probe, roi_sets(probe, input_hw, large_set if i == 0 else 0)
                     + (contract_roi_sets() if i == 0 else []))
    return names


PARITY_TEMP_PREFIX: str = "roiseg_parity_"
"""Temporary folders of parity-check (``<prefix>pid<pid>_<random>``; a killed run's are removed by the next)."""


def run_roi_parity(detector: str | Path, source: HeadSource, fused: str | Path | None, probes_from: dict[str, Any],
                   tolerances: dict[str, float | None], feature_tensor: str | None = None,
                   large_set: int = LARGE_ROI_SET, engine: str = "onnxruntime") -> dict[str, Any]:
    """``parity-check`` on a ROI model (``fused``; ``None``: built here as ``fuse`` builds it, in a temporary
    folder): the report of :class:`RoiStages` over the probe images (``probes_from``: ``annotations``,
    ``images``, ``max_images``); ``tolerances``: given ``atol``/``min_argmax``/``mean_atol`` (``None``: by
    the model's precision)."""
    if source.head is None:
        raise InputError(f"head {source.path}: parity needs a checkpoint (the PyTorch path runs its weights)")
    with gt.temp_dir(PARITY_TEMP_PREFIX) as tmp:
        if fused is None:
            build = build_fused(detector, source, FuseOptions(feature_tensor=feature_tensor))
            fused_path = gt.save_model(finish_fused(build)[0], Path(tmp) / "fused.onnx")
            label = "temporary (built from the detector and the head as fuse builds it)"
        else:
            build, _ = rebuild_reference(detector, source, fused)
            fused_path, label = Path(fused), str(fused)
        fused_model = gt.load_model(fused_path)
        meta = read_metadata(fused_model)
        if meta.int8:  # against the float model: what int8 can promise (roiseg.verify.int8)
            probes, n_probes = probe_images(meta, **probes_from)
            return {**int8_parity(fused_model, build.model, meta, probes, n_probes), "fused": label,
                    "metadata": meta.summary()}
        reference = TorchPath(detector, [meta.feature_tensor, *meta.extra_tensors], source.head)
        probes, n_probes = probe_images(meta, **probes_from)
        tol = Tolerances.for_model(meta.fp16, **tolerances)
        unsimplified = build.model if meta.simplified and not meta.fp16 else None
        raw_pre = meta.preprocessing if meta.image_input is ImageInput.RAW else None
        stages = RoiStages(fused_model, build.detector, unsimplified, reference, meta.outputs, raw_pre, meta.input_hw,
                           engine)
        names = compare_paths(stages, probes, meta.input_hw, n_probes, large_set)
        report = stages.report(tol, meta.fp16, engine, names)
    report.update({"fused": label, "metadata": meta.summary()})
    return report
