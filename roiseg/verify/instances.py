"""Parity of an instance model (:mod:`roiseg.export.instances`) on real images.

Per image, preprocessed as the model's metadata says. A raw-image model gets the image file as it is;
the reference detector then reads the graph's own preprocessed image, the model's normalised boxes
(its internal ``rois``, which feed its head) are compared and fed to the ROI model, and its pixel
``boxes`` must be those times the image size. With a detector preprocessing of its own
(``--det-preprocessing``) the reference detector gets the image converted to it.

* ``boxes``/``scores``/``classes`` vs the Python reference: the original detector ONNX (onnxruntime)
  gives the detection tensor, :func:`roiseg.detection.reference.reference_instances` (decode,
  person classes, threshold, ``torchvision.ops.batched_nms``, cap) the instances. Same count, equal
  classes, box and score max abs ``<= box_atol``.
* the mask outputs vs the ROI model (``images`` + ``rois``, from ``roiseg fuse``) run with the
  instance model's own boxes: max abs ``<= mask_atol``.
* the thresholds: every score ``> score_threshold``, ``K <= max_instances``, classes among the person classes
  (and, for a raw-image model, the pixel boxes).

Both comparisons take the same per-image inputs: :class:`ExactInstances` (float32) and, since a float16
model cannot match one to one (a detection near the threshold may flip), :class:`roiseg.verify.fp16.Fp16Instances`
(matched by box IoU, masks at float16 tolerances).

``engine`` runs the instance model (``onnxruntime`` or ``openvino``, CPU, f32); the references (the
detector's output, the ROI model) always run in onnxruntime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

import graph_tools as gt
from roiseg.conventions import (
    DEFAULT_IMAGE_INPUT, FUSED_ROIS_INPUT, INSTANCE_OUTPUTS, PREPROCESSED_TENSOR, RAW_IMAGE_INPUT, ImageInput,
    Preprocessing, preprocess, read_user_image,
)
from roiseg.detection.formats import Instances
from roiseg.detection.reference import reference_instances
from roiseg.errors import InputError, translate_graph_errors
from roiseg.export.fuse import finish_fused
from roiseg.export.head_source import load_head_source
from roiseg.export.instances import DET_PREPROCESSED_RAW
from roiseg.export.options import FuseOptions
from roiseg.export.probes import probe_image_paths
from roiseg.export.raw_input import convert_preprocessed
from roiseg.runtime.engines import engine_session
from roiseg.runtime.metadata import KEY_INSTANCES, FusedMetadata, read_metadata
from roiseg.verify.fp16 import Fp16Instances
from roiseg.verify.rebuild import exposed_detector, rebuild_reference
from roiseg.verify.table import Column, format_rows, verdict
from roiseg.verify.tolerances import BOX_ATOL, FP16_PARITY_ATOL, PARITY_ATOL


def _load(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else gt.load_model(model)


def _order(inst: Instances) -> np.ndarray:
    """Best first; ties (equal scores) by box, so both sides list them alike."""
    b = inst.boxes
    return np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], -inst.scores)) if len(b) else np.zeros(0, np.int64)


def compare_instances(got: Instances, ref: Instances) -> dict[str, Any]:
    """Count, class agreement and the largest box and score differences (``inf`` on a count mismatch)."""
    row: dict[str, Any] = {"count": int(len(got.scores)), "reference_count": int(len(ref.scores))}
    if len(got.scores) != len(ref.scores):
        return {**row, "box_max_abs": float("inf"), "score_max_abs": float("inf"), "classes_equal": False}
    g, r = _order(got), _order(ref)
    diff = np.abs(got.boxes[g] - ref.boxes[r])
    return {**row, "box_max_abs": float(diff.max()) if diff.size else 0.0,
            "score_max_abs": float(np.abs(got.scores[g] - ref.scores[r]).max()) if len(g) else 0.0,
            "classes_equal": bool(np.array_equal(got.classes[g], ref.classes[r]))}


class ExactInstances:
    """The float32 instance comparison: one row per image, detections one to one (module docstring)."""

    KIND = "instances"
    COLUMNS = (
        Column("image", 22, lambda r: r["image"][:22], left=True), Column("K", 4, lambda r: str(r["count"])),
        Column("ref K", 6, lambda r: str(r["reference_count"])),
        Column("box max abs", 12, lambda r: f"{r['box_max_abs']:.2e}"),
        Column("score max abs", 14, lambda r: f"{r['score_max_abs']:.2e}"),
        Column("masks max abs", 14, lambda r: f"{r['mask_max_abs']:.2e}"),
        Column("result", 0, lambda r: verdict(r["passed"]) + ("" if r["classes_equal"] else " (classes differ)")
               + ("" if r["thresholds_held"] else " (thresholds not held)"), gap=2),
    )

    def __init__(self, box_atol: float = BOX_ATOL, mask_atol: float = PARITY_ATOL) -> None:
        self.box_atol, self.mask_atol, self.rows = box_atol, mask_atol, []

    def add(self, image: str, got: Instances, ref: Instances, masks: dict[str, np.ndarray],
            roi_masks: dict[str, np.ndarray], thresholds_held: bool) -> dict[str, Any]:
        """Compare one image; ``masks``/``roi_masks``: each mask output of the model and of the ROI model."""
        row = {"image": image, **compare_instances(got, ref), "thresholds_held": thresholds_held}
        row["mask_max_abs"] = max((float(np.abs(masks[n].astype(np.float64) - r).max()) if r.size else 0.0
                                   for n, r in roi_masks.items()), default=0.0)
        row["passed"] = bool(row["box_max_abs"] <= self.box_atol and row["score_max_abs"] <= self.box_atol
                             and row["classes_equal"] and row["mask_max_abs"] <= self.mask_atol and thresholds_held)
        self.rows.append(row)
        return row

    def report(self) -> dict[str, Any]:
        return {"kind": self.KIND, "images": self.rows, "box_atol": self.box_atol, "mask_atol": self.mask_atol,
                "passed": bool(self.rows) and all(r["passed"] for r in self.rows)}

    @classmethod
    def table(cls, report: dict[str, Any]) -> str:
        """The per-image table ``roiseg parity-check`` prints for an instance model."""
        engine = f" on {report['engine']}" if report.get("engine", "onnxruntime") != "onnxruntime" else ""
        footer = [f"{len(report['images'])} image(s), {sum(r['count'] for r in report['images'])} instances; boxes "
                  f"and scores <= {report['box_atol']:g}, masks <= {report['mask_atol']:g}{engine}: "
                  f"{verdict(report['passed'])}"]
        return format_rows(cls.COLUMNS, report["images"], footer)

    @staticmethod
    def failures(report: dict[str, Any]) -> str:
        """One line naming the images that failed."""
        bad = [r["image"] for r in report["images"] if not r["passed"]]
        return f"{len(bad)} of {len(report['images'])} image(s) failed: {', '.join(bad[:8])}" if bad else "no image compared"


class _Inputs:
    """How one image reaches the instance model, the reference detector and the ROI model."""

    def __init__(self, model: onnx.ModelProto, meta: FusedMetadata, det_pre: Preprocessing | None) -> None:
        self.meta, self.det_pre, self.raw = meta, det_pre, meta.image_input is ImageInput.RAW
        self.graph_pre = None
        if self.raw:  # the reference detector reads what the graph's own preprocessing gives
            tensor = PREPROCESSED_TENSOR if det_pre is None else DET_PREPROCESSED_RAW
            self.graph_pre = gt.create_session(gt.trim_at_tensor(model, [tensor]))

    def __call__(self, path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[int, int]]:
        """(the model's image feed, the detector's input, the original size)."""
        bgr = read_user_image(path)
        hw = (int(bgr.shape[0]), int(bgr.shape[1]))
        if self.raw:
            feed = {RAW_IMAGE_INPUT: np.ascontiguousarray(bgr)}
            return feed, self.graph_pre.run(None, feed)[0].astype(np.float32), hw
        x = preprocess(bgr, self.meta.input_hw, self.meta.preprocessing)
        det = x if self.det_pre is None else convert_preprocessed(x, self.meta.preprocessing, self.det_pre)
        return {DEFAULT_IMAGE_INPUT: x}, det, hw


class _Run:
    """The three sessions of an instance parity run: the detector with its detection tensor exposed, the
    instance model (on ``engine``; a raw-image one also exposes its internal normalised ``rois``), the ROI model."""

    def __init__(self, model: onnx.ModelProto, meta: FusedMetadata, detector: onnx.ModelProto | str | Path,
                 roi_model: onnx.ModelProto, engine: str) -> None:
        self.spec, self.params = meta.instances.spec, meta.instances.params
        self.inputs = _Inputs(model, meta, meta.instances.det_preprocessing)
        exposed = exposed_detector(detector, [self.spec.tensor])
        self.internal = self.inputs.raw and FUSED_ROIS_INPUT in {o for n in model.graph.node for o in n.output}
        run_model = gt.trim_at_tensor(model, [FUSED_ROIS_INPUT], keep_original_outputs=True) if self.internal else model
        self.det, self.inst, self.roi = gt.create_session(exposed), engine_session(engine, run_model), gt.create_session(roi_model)
        self.mask_names = [o.name for o in self.inst.get_outputs() if o.name not in (*INSTANCE_OUTPUTS, FUSED_ROIS_INPUT)]

    def image(self, path: str | Path) -> tuple[Instances, Instances, dict, dict, bool]:
        """(the model's instances, the reference's, its mask outputs, the ROI model's on its boxes, thresholds held)."""
        feed, x_det, (h0, w0) = self.inputs(path)
        outs = dict(zip([o.name for o in self.inst.get_outputs()], self.inst.run(None, feed)))
        got = Instances(*(outs[name] for name in INSTANCE_OUTPUTS))
        pixels_held = True
        if self.inputs.raw:  # boxes in original pixels: compare them normalised
            size = np.float32([w0, h0, w0, h0])
            normalised = outs[FUSED_ROIS_INPUT] if self.internal else (got.boxes / size).astype(np.float32)
            pixels_held = bool(np.allclose(got.boxes, normalised * size, rtol=1e-6, atol=1e-3))
            got.boxes = normalised
        det_input = self.det.get_inputs()[0].name
        ref = reference_instances(self.det.run([self.spec.tensor], {det_input: x_det})[0], self.spec, self.params)
        roi_outs = dict(zip(self.mask_names, self.roi.run(self.mask_names, {**feed, FUSED_ROIS_INPUT: got.boxes})))
        p = self.params
        held = bool(len(got.scores) <= p.max_instances and (got.scores > p.score_threshold).all()
                    and np.isin(got.classes, p.person_classes).all() and pixels_held)
        return got, ref, outs, roi_outs, held


def instance_parity(
    instance_model: onnx.ModelProto | str | Path, detector: onnx.ModelProto | str | Path,
    roi_model: onnx.ModelProto | str | Path, images: Sequence[str | Path],
    box_atol: float = BOX_ATOL, mask_atol: float = PARITY_ATOL, engine: str = "onnxruntime",
) -> dict[str, Any]:
    """The report described in the module docstring: per image and ``passed`` overall. A float16 model
    is compared by :class:`~roiseg.verify.fp16.Fp16Instances` (``mask_atol`` then bounds the largest mask
    error, by default none)."""
    model = _load(instance_model)
    if KEY_INSTANCES not in gt.read_props(model):
        raise InputError(f"not an instance model (no {KEY_INSTANCES} metadata)")
    meta = read_metadata(model)
    run = _Run(model, meta, detector, _load(roi_model), engine)
    check = Fp16Instances(run.mask_names, mask_atol) if meta.fp16 else ExactInstances(box_atol, mask_atol)
    for path in images:
        check.add(Path(path).name, *run.image(path))
    return {**check.report(), "engine": engine, "detections": run.spec.to_json(), "params": run.params.to_json()}


@translate_graph_errors
def run_instance_parity(detector: str | Path, head: str | Path, fused: str | Path, annotations: str | Path | None = None,
                        images: str | Path | None = None, max_images: int | None = None,
                        atol: float | None = None, engine: str = "onnxruntime") -> dict[str, Any]:
    """``parity-check`` on an instance model: the ROI model rebuilt from ``detector`` and ``head`` as
    ``roiseg fuse`` built the file (:func:`~roiseg.verify.rebuild.rebuild_reference`), unsimplified (the
    reference the ROI stages of parity use too; fuse verified its simplification when it wrote), then
    :func:`instance_parity` on the real images (``annotations`` + ``images``, or every image of the
    ``images`` folder). ``atol``: the mask tolerance (default ``PARITY_ATOL``; float16: none); ``engine``
    runs the instance model."""
    if images is None:
        raise InputError("an instance model is checked on real images (give --images, with or without --annotations)")
    paths = probe_image_paths(annotations, images, max_images)
    build, meta = rebuild_reference(detector, load_head_source(head), fused)
    roi_model, _ = finish_fused(build, FuseOptions(simplify=False))
    default = FP16_PARITY_ATOL if meta.fp16 else PARITY_ATOL
    report = instance_parity(fused, detector, roi_model, paths, mask_atol=default if atol is None else atol,
                             engine=engine)
    report.update({"fused": str(fused), "detector": str(detector), "head": str(head), "metadata": meta.summary()})
    return report
