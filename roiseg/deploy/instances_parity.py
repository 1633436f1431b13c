"""Parity of an instance model (:mod:`roiseg.deploy.instances`) on real images.

Per image, preprocessed as the model's metadata says. A raw-image model gets the image file as it is;
the reference detector then reads the graph's own preprocessed image, the model's normalised boxes
(its internal ``rois``, which feed its head) are compared and fed to the ROI model, and its pixel
``boxes`` must be those times the image size. With a detector preprocessing of its own
(``--det-preprocessing``) the reference detector gets the image converted to it.

* ``boxes``/``scores``/``classes`` vs the Python reference: the original detector ONNX (onnxruntime)
  gives the detection tensor, :func:`roiseg.deploy.detections.reference_instances` (decode,
  person classes, threshold, ``torchvision.ops.batched_nms``, cap) the instances. Same count, equal
  classes, box and score max abs ``<= box_atol``.
* the mask outputs vs the ROI model (``images`` + ``rois``, from ``roiseg fuse``) run with the
  instance model's own boxes: max abs ``<= mask_atol``.
* the thresholds: every score ``> score_threshold``, ``K <= max_instances``, classes among the person classes
  (and, for a raw-image model, the pixel boxes).

A float16 model cannot match one to one (a detection near the threshold may flip): it is matched by
box IoU and its masks held to float16 tolerances (:mod:`roiseg.deploy.instances_fp16`).

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
    DEFAULT_IMAGE_INPUT, FP16_PARITY_ATOL, FUSED_ROIS_INPUT, INSTANCE_OUTPUTS, PARITY_ATOL, PREPROCESSED_TENSOR, RAW_IMAGE_INPUT,
    Preprocessing, preprocess, read_image,
)
from roiseg.deploy.detections import Instances, reference_instances
from roiseg.deploy.engines import engine_session
from roiseg.deploy.instances import DET_PREPROCESSED_RAW, read_instance_props
from roiseg.deploy.instances_fp16 import Fp16InstanceCheck, format_fp16_table
from roiseg.deploy.fuse import build_fused, finish_fused
from roiseg.deploy.metadata import read_metadata
from roiseg.deploy.probes import probe_image_paths
from roiseg.deploy.raw_input import convert_preprocessed
from roiseg.errors import InputError, translate_graph_errors
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

BOX_ATOL: float = 1e-4
"""Largest difference of a normalised box coordinate or a score between the graph and the reference."""


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


class _Inputs:
    """How one image reaches the instance model, the reference detector and the ROI model."""

    def __init__(self, model: onnx.ModelProto, meta, det_pre: Preprocessing | None) -> None:
        self.meta, self.det_pre, self.raw = meta, det_pre, meta.image_input == "raw"
        self.graph_pre = None
        if self.raw:  # the reference detector reads what the graph's own preprocessing gives
            tensor = PREPROCESSED_TENSOR if det_pre is None else DET_PREPROCESSED_RAW
            self.graph_pre = gt.create_session(gt.trim_at_tensor(model, [tensor]))

    def __call__(self, path: str | Path) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[int, int]]:
        """(the model's image feed, the detector's input, the original size)."""
        bgr = read_image(path)
        hw = (int(bgr.shape[0]), int(bgr.shape[1]))
        if self.raw:
            feed = {RAW_IMAGE_INPUT: np.ascontiguousarray(bgr)}
            return feed, self.graph_pre.run(None, feed)[0].astype(np.float32), hw
        x = preprocess(bgr, self.meta.input_hw, self.meta.preprocessing)
        det = x if self.det_pre is None else convert_preprocessed(x, self.meta.preprocessing, self.det_pre)
        return {DEFAULT_IMAGE_INPUT: x}, det, hw


def instance_parity(
    instance_model: onnx.ModelProto | str | Path, detector: onnx.ModelProto | str | Path,
    roi_model: onnx.ModelProto | str | Path, images: Sequence[str | Path],
    box_atol: float = BOX_ATOL, mask_atol: float = PARITY_ATOL, engine: str = "onnxruntime",
) -> dict[str, Any]:
    """The report described in the module docstring: per image and ``passed`` overall. A float16 model
    is held to :mod:`roiseg.deploy.instances_fp16` instead (``mask_atol`` then bounds the largest mask
    error, by default none)."""
    model = _load(instance_model)
    found = read_instance_props(model)
    if found is None:
        raise InputError("not an instance model (no roiseg.instances metadata)")
    spec, params, det_pre = found
    meta = read_metadata(model)
    original = _load(detector)
    exposed = original if spec.tensor in {o.name for o in original.graph.output} else \
        gt.trim_at_tensor(original, [spec.tensor], keep_original_outputs=True)
    inputs = _Inputs(model, meta, det_pre)
    # a raw-image model's boxes are pixels: read its normalised boxes (the internal rois) as well
    internal = inputs.raw and FUSED_ROIS_INPUT in {o for n in model.graph.node for o in n.output}
    run_model = gt.trim_at_tensor(model, [FUSED_ROIS_INPUT], keep_original_outputs=True) if internal else model
    det, inst, roi = gt.create_session(exposed), engine_session(engine, run_model), gt.create_session(_load(roi_model))
    det_input = det.get_inputs()[0].name
    mask_names = [o.name for o in inst.get_outputs() if o.name not in (*INSTANCE_OUTPUTS, FUSED_ROIS_INPUT)]
    rows, half = [], Fp16InstanceCheck(mask_names, mask_atol) if meta.fp16 else None
    for path in images:
        feed, x_det, (h0, w0) = inputs(path)
        outs = dict(zip([o.name for o in inst.get_outputs()], inst.run(None, feed)))
        got = Instances(*(outs[name] for name in INSTANCE_OUTPUTS))
        pixels_held = True
        if inputs.raw:  # boxes in original pixels: compare them normalised
            size = np.float32([w0, h0, w0, h0])
            normalised = outs[FUSED_ROIS_INPUT] if internal else (got.boxes / size).astype(np.float32)
            pixels_held = bool(np.allclose(got.boxes, normalised * size, rtol=1e-6, atol=1e-3))
            got.boxes = normalised
        ref = reference_instances(det.run([spec.tensor], {det_input: x_det})[0], spec, params)
        roi_outs = dict(zip(mask_names, roi.run(mask_names, {**feed, FUSED_ROIS_INPUT: got.boxes})))
        held = bool(len(got.scores) <= params.max_instances and (got.scores > params.score_threshold).all()
                    and np.isin(got.classes, params.person_classes).all() and pixels_held)
        if half is not None:
            half.add(Path(path).name, got, ref, outs, roi_outs, held)
            continue
        row = {"image": Path(path).name, **compare_instances(got, ref), "thresholds_held": held}
        row["mask_max_abs"] = max((float(np.abs(outs[n].astype(np.float64) - r).max()) if r.size else 0.0
                                   for n, r in roi_outs.items()), default=0.0)
        row["passed"] = bool(row["box_max_abs"] <= box_atol and row["score_max_abs"] <= box_atol
                             and row["classes_equal"] and row["mask_max_abs"] <= mask_atol and held)
        rows.append(row)
    common = {"engine": engine, "detections": spec.to_json(), "params": params.to_json()}
    if half is not None:
        return {**half.report(), **common}
    return {"images": rows, "box_atol": box_atol, "mask_atol": mask_atol, **common,
            "passed": bool(rows) and all(r["passed"] for r in rows)}


def format_instance_table(report: dict[str, Any]) -> str:
    """The per-image table ``roiseg parity-check`` prints for an instance model."""
    if report.get("fp16"):
        return format_fp16_table(report)
    head = f"{'image':<22} {'K':>4} {'ref K':>6} {'box max abs':>12} {'score max abs':>14} {'masks max abs':>14}  result"
    lines = [head, "-" * len(head)]
    for r in report["images"]:
        lines.append(f"{r['image'][:22]:<22} {r['count']:>4} {r['reference_count']:>6} {r['box_max_abs']:>12.2e} "
                     f"{r['score_max_abs']:>14.2e} {r['mask_max_abs']:>14.2e}  "
                     f"{'PASS' if r['passed'] else 'FAIL'}{'' if r['classes_equal'] else ' (classes differ)'}"
                     f"{'' if r['thresholds_held'] else ' (thresholds not held)'}")
    engine = f" on {report['engine']}" if report.get("engine", "onnxruntime") != "onnxruntime" else ""
    lines.append(f"{len(report['images'])} image(s), {sum(r['count'] for r in report['images'])} instances; boxes and "
                 f"scores <= {report['box_atol']:g}, masks <= {report['mask_atol']:g}{engine}: "
                 f"{'PASS' if report['passed'] else 'FAIL'}")
    return "\n".join(lines)


def instance_failure_summary(report: dict[str, Any]) -> str:
    """One line naming the images that failed (a float16 model: what fell short)."""
    if report.get("fp16"):
        why = [f"{name}: {'mean abs' if 'mean_abs' in m else 'masks'} outside float16 tolerance"
               for name, m in report["masks"].items() if not m["passed"]]
        for key, what in (("matched_of_reference", "of the reference's"), ("matched_of_model", "of the model's")):
            if report[key] < report["min_matched"]:
                why.append(f"matched {100 * report[key]:.1f}% {what} instances")
        why += [f"{r['image']}: thresholds not held" for r in report["images"] if not r["thresholds_held"]]
        return "; ".join(why) or "no image compared"
    bad = [r["image"] for r in report["images"] if not r["passed"]]
    return f"{len(bad)} of {len(report['images'])} image(s) failed: {', '.join(bad[:8])}" if bad else "no image compared"


@translate_graph_errors
def run_instance_parity(detector: str | Path, head: str | Path, fused: str | Path, annotations: str | Path | None = None,
                        images: str | Path | None = None, max_images: int | None = None,
                        atol: float | None = None, engine: str = "onnxruntime") -> dict[str, Any]:
    """``parity-check`` on an instance model: the ROI model built from ``detector`` and ``head`` as
    ``roiseg fuse`` builds it (with the file's feature tensor, opset, output modes and image input),
    then :func:`instance_parity` on the real images (``annotations`` + ``images``, or every image of the
    ``images`` folder). ``atol``: the mask tolerance (default ``PARITY_ATOL``); ``engine`` runs the
    instance model (:func:`instance_parity`)."""
    fused = Path(fused)
    meta = read_metadata(fused)
    if images is None:
        raise InputError("an instance model is checked on real images (give --images, with or without --annotations)")
    paths = probe_image_paths(annotations, images, max_images)
    opset = gt.default_opset(gt.load_model(fused, load_external_data=False))
    build = build_fused(detector, head, feature_tensor=meta.feature_tensor, opset=opset, outputs=meta.outputs,
                        image_input=meta.image_input)
    if meta.extractor_sha256 != build.meta.extractor_sha256:
        LOG.warning("%s was built from another detector file than %s (sha256 differs)", fused, detector)
    roi_model, _ = finish_fused(build)
    default = FP16_PARITY_ATOL if meta.fp16 else PARITY_ATOL
    report = instance_parity(fused, detector, roi_model, paths, mask_atol=default if atol is None else atol,
                             engine=engine)
    report.update({"kind": "instances", "fused": str(fused), "detector": str(detector), "head": str(head),
                   "metadata": meta.summary()})
    return report

