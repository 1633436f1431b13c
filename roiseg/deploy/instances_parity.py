"""Parity of an instance model (:mod:`roiseg.deploy.instances`) on real images.

Per image, preprocessed as the model's metadata says:

* ``boxes``/``scores``/``classes`` vs the Python reference: the original detector ONNX (onnxruntime)
  gives the detection tensor, :func:`roiseg.deploy.detections.reference_instances` (decode,
  person classes, threshold, ``torchvision.ops.batched_nms``, cap) the instances. Same count, equal
  classes, box and score max abs ``<= box_atol``.
* the mask outputs vs the ROI model (``images`` + ``rois``, from ``roiseg fuse``) run with the
  instance model's own boxes: max abs ``<= mask_atol``.
* the thresholds: every score ``> score_threshold``, ``K <= max_instances``, classes among the person classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

import graph_tools as gt
from roiseg.conventions import (
    DEFAULT_IMAGE_INPUT, FUSED_ROIS_INPUT, INSTANCE_OUTPUTS, PARITY_ATOL, preprocess, read_image,
)
from roiseg.deploy.detections import Instances, reference_instances
from roiseg.deploy.instances import read_instance_props
from roiseg.deploy.metadata import read_metadata
from roiseg.errors import InputError

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


def instance_parity(
    instance_model: onnx.ModelProto | str | Path, detector: onnx.ModelProto | str | Path,
    roi_model: onnx.ModelProto | str | Path, images: Sequence[str | Path],
    box_atol: float = BOX_ATOL, mask_atol: float = PARITY_ATOL,
) -> dict[str, Any]:
    """The report described in the module docstring: per image and ``passed`` overall."""
    model = _load(instance_model)
    found = read_instance_props(model)
    if found is None:
        raise InputError("not an instance model (no roiseg.instances metadata)")
    spec, params = found
    meta = read_metadata(model)
    original = _load(detector)
    exposed = original if spec.tensor in {o.name for o in original.graph.output} else \
        gt.trim_at_tensor(original, [spec.tensor], keep_original_outputs=True)
    det, inst, roi = gt.create_session(exposed), gt.create_session(model), gt.create_session(_load(roi_model))
    det_input = det.get_inputs()[0].name
    mask_names = [o.name for o in inst.get_outputs() if o.name not in INSTANCE_OUTPUTS]
    rows = []
    for path in images:
        x = preprocess(read_image(path), meta.input_hw, meta.preprocessing)
        outs = dict(zip([o.name for o in inst.get_outputs()], inst.run(None, {DEFAULT_IMAGE_INPUT: x})))
        got = Instances(*(outs[name] for name in INSTANCE_OUTPUTS))
        ref = reference_instances(det.run([spec.tensor], {det_input: x})[0], spec, params)
        row = {"image": Path(path).name, **compare_instances(got, ref)}
        roi_outs = roi.run(mask_names, {DEFAULT_IMAGE_INPUT: x, FUSED_ROIS_INPUT: got.boxes})
        row["mask_max_abs"] = max((float(np.abs(outs[n].astype(np.float64) - r).max()) if r.size else 0.0
                                   for n, r in zip(mask_names, roi_outs)), default=0.0)
        row["thresholds_held"] = bool(len(got.scores) <= params.max_instances
                                      and (got.scores > params.score_threshold).all()
                                      and np.isin(got.classes, params.person_classes).all())
        row["passed"] = bool(row["box_max_abs"] <= box_atol and row["score_max_abs"] <= box_atol
                             and row["classes_equal"] and row["mask_max_abs"] <= mask_atol and row["thresholds_held"])
        rows.append(row)
    return {"images": rows, "box_atol": box_atol, "mask_atol": mask_atol, "detections": spec.to_json(),
            "params": params.to_json(), "passed": bool(rows) and all(r["passed"] for r in rows)}
