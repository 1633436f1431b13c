"""Image -> person instances in one ONNX: the detector's boxes, NMS and the masks in one graph.

``images`` [1, 3, H, W] -> ``boxes`` [K, 4] (normalised x1y1x2y2), ``scores`` [K], ``classes`` [K]
(int64) and the mask outputs of the ROI model (``masks`` [K, 3, H, W] by default) for those boxes.

Built from the one build pipeline: :func:`roiseg.deploy.fuse.build_fused` gives the ROI model
(``images`` + ``rois`` -> masks, unsimplified); the detector cut at its detection tensor, at the
same opset, and the post-processing graph (:mod:`roiseg.deploy.detections_onnx`) feed its
``rois``; both detector copies share the image input, and :func:`graph_tools.dedupe.merge_duplicate_nodes`
merges the copies, so the detector runs once (what only the taps need stays). Then simplification,
verified on images only (:func:`finish_instances`), and the ROI model's metadata plus
``roiseg.instances`` (JSON: detection spec and thresholds).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

import graph_tools as gt
from graph_tools.dedupe import merge_duplicate_nodes
from roiseg.conventions import (
    DEFAULT_FUSED_MODEL, DEFAULT_IMAGE_INPUT, DEFAULT_OUTPUTS, DETECTOR_PREFIX, FUSED_BOXES_OUTPUT, FUSED_ROIS_INPUT,
    INSTANCE_AXIS, INSTANCE_OUTPUTS, POST_PREFIX,
)
from roiseg.deploy.detections import DetectionSpec, InstanceParams, detection_spec
from roiseg.deploy.detections_onnx import postprocess_model
from roiseg.deploy.export import output_tensors
from roiseg.deploy.fuse import FusedBuild, build_fused, full_check
from roiseg.deploy.head_source import HeadSource
from roiseg.deploy.metadata import write_metadata
from roiseg.deploy.probes import check_feeds
from roiseg.errors import InputError, translate_graph_errors
from roiseg.utils.atomic import ensure_writable_dir
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

KEY_INSTANCES: str = "roiseg.instances"
"""Metadata of an instance model: JSON ``{"detections": DetectionSpec, "params": InstanceParams}``."""
MASKS_PREFIX: str = "roiseg_masks/"
"""Prefix of the ROI model's names inside an instance model (its detector copy is merged away)."""
ROI_FEED: str = "rois_feed"
"""Post-processing output that feeds the ROI model's ``rois`` (a copy of ``boxes``)."""


@dataclass
class InstanceBuild:
    """An unsimplified instance model and what it was built from."""

    model: onnx.ModelProto
    roi_build: FusedBuild
    spec: DetectionSpec
    params: InstanceParams
    nodes_merged: int = 0
    warnings: list[str] = field(default_factory=list)


def instance_props(spec: DetectionSpec, params: InstanceParams) -> dict[str, str]:
    return {KEY_INSTANCES: json.dumps({"detections": json.loads(spec.to_json()), "params": json.loads(params.to_json())},
                                      sort_keys=True)}


def read_instance_props(model: onnx.ModelProto) -> tuple[DetectionSpec, InstanceParams] | None:
    """The detection spec and thresholds of an instance model; ``None`` for a ROI model."""
    text = gt.read_props(model).get(KEY_INSTANCES)
    if text is None:
        return None
    d = json.loads(text)
    p = d["params"]
    return (DetectionSpec.from_json(json.dumps(d["detections"])),
            InstanceParams(tuple(p["person_classes"]), p["score_threshold"], p["iou_threshold"], p["max_instances"]))


def detection_front(original: onnx.ModelProto, spec: DetectionSpec, params: InstanceParams, opset: int) -> onnx.ModelProto:
    """``images`` -> ``boxes``, ``scores``, ``classes`` and :data:`ROI_FEED`: the detector cut at the
    detection tensor (at ``opset``) with the post-processing behind it."""
    detector = gt.convert_opset(gt.trim_at_tensor(original, [spec.tensor]), opset, "detector (detection path)")
    inputs = gt.graph_inputs(detector)
    post = postprocess_model(spec, params, opset, detector.ir_version, gt.dims(detector.graph.output[0]))
    post.graph.node.append(onnx.helper.make_node("Identity", [FUSED_BOXES_OUTPUT], [ROI_FEED], name="roi_feed"))
    post.graph.output.append(onnx.helper.make_tensor_value_info(ROI_FEED, onnx.TensorProto.FLOAT, [INSTANCE_AXIS, 4]))
    public = {name: name for name in INSTANCE_OUTPUTS}
    return gt.splice(detector, post, {spec.tensor: spec.tensor}, rename_first_inputs={inputs[0].name: DEFAULT_IMAGE_INPUT},
                     public=public, prefix=POST_PREFIX, clash_prefix=DETECTOR_PREFIX, pin_batch_of=(DEFAULT_IMAGE_INPUT,),
                     producer_name="roiseg")


@translate_graph_errors
def build_instances(
    detector: str | Path, head: str | Path | HeadSource, detections: str | None = None, det_format: str | None = None,
    params: InstanceParams = InstanceParams(), feature_tensor: str | None = None, opset: int | None = None,
    strict: bool = False, outputs: Sequence[str] = DEFAULT_OUTPUTS, decoded: bool | None = None,
) -> InstanceBuild:
    """The unsimplified instance model (see the module docstring); nothing is written.

    ``detections``/``det_format``/``decoded``: :func:`roiseg.deploy.detections.detection_spec`
    (the detector's detection output and its format, found from shapes and metadata by default).
    The other arguments are :func:`roiseg.deploy.fuse.build_fused`'s.
    """
    roi = build_fused(detector, head, feature_tensor=feature_tensor, opset=opset, strict=strict, outputs=outputs)
    original = gt.load_model(roi.detector_path)
    spec = detection_spec(original, detections, det_format, decoded)
    params.check(spec)
    LOG.info("detections: %s (%s, %d classes); persons %s, score > %g, IoU > %g suppressed, at most %d",
             spec.tensor, spec.format, spec.num_classes, list(params.person_classes), params.score_threshold,
             params.iou_threshold, params.max_instances)
    front = detection_front(original, spec, params, roi.opset)
    masks = output_tensors(roi.meta.outputs)
    combined = gt.splice(
        front, roi.model, {POST_PREFIX + ROI_FEED: FUSED_ROIS_INPUT}, share_inputs={DEFAULT_IMAGE_INPUT: DEFAULT_IMAGE_INPUT},
        public={name: name for name in masks}, prefix=MASKS_PREFIX, clash_prefix=DETECTOR_PREFIX,
        input_order=(DEFAULT_IMAGE_INPUT,), producer_name="roiseg",
    )
    for vi in combined.graph.output:  # the masks are per instance
        if vi.name in masks and vi.type.tensor_type.shape.dim:
            vi.type.tensor_type.shape.dim[0].dim_param = INSTANCE_AXIS
    merged, report = merge_duplicate_nodes(combined)
    LOG.info("merged %d duplicate detector nodes (%d initializers)", report.nodes_removed, report.initializers_removed)
    write_metadata(merged, roi.meta)
    for key, value in instance_props(spec, params).items():
        gt.set_prop(merged, key, value)
    full_check(merged)
    return InstanceBuild(merged, roi, spec, params, report.nodes_removed, list(roi.warnings))


def instance_feeds(build: InstanceBuild, check_images: Sequence[str | Path] | None = None) -> list[dict[str, np.ndarray]]:
    """Images to verify the simplified instance model on: the probe images and a black image (few or no detections)."""
    meta = build.roi_build.meta
    images = [f[DEFAULT_IMAGE_INPUT] for f in check_feeds(meta.input_hw, meta.preprocessing, check_images)][::2]
    images.append(np.zeros_like(images[0]))
    return [{DEFAULT_IMAGE_INPUT: image} for image in images]


def finish_instances(build: InstanceBuild, simplify: bool = True,
                     check_images: Sequence[str | Path] | None = None) -> tuple[onnx.ModelProto, str]:
    """The model to write (simplified when verified on :func:`instance_feeds`) and a note on what was done."""
    meta = build.roi_build.meta
    model, note = build.model, "simplification switched off"
    meta.simplified, meta.simplifier = False, ""
    if simplify:
        result = gt.simplify_verified(model, instance_feeds(build, check_images))
        model, note = result.model, result.note
        if not result.simplified:
            build.warnings.append(f"kept the unsimplified model: {note}")
        meta.simplified, meta.simplifier = result.simplified, result.tool
    write_metadata(model, meta)
    for key, value in instance_props(build.spec, build.params).items():
        gt.set_prop(model, key, value)
    return model, note


@dataclass
class InstanceFuseReport:
    """What :func:`fuse_instances` wrote."""

    out: Path
    inputs: list
    outputs: list
    spec: DetectionSpec
    params: InstanceParams
    nodes: int
    nodes_merged: int
    simplify_note: str
    warnings: list[str]

    def summary(self) -> str:
        lines = [f"instance model: {self.out}"]
        lines += [f"  input  {n:<8} {s}" for n, s in self.inputs] + [f"  output {n:<8} {s}" for n, s in self.outputs]
        lines += [f"  detections {self.spec.tensor} ({self.spec.format}); person classes {list(self.params.person_classes)}, "
                  f"score > {self.params.score_threshold:g}, NMS IoU {self.params.iou_threshold:g}, "
                  f"at most {self.params.max_instances}",
                  f"  {self.nodes} nodes ({self.nodes_merged} duplicate detector nodes merged); {self.simplify_note}"]
        return "\n".join(lines + [f"  warning: {w}" for w in self.warnings])


@translate_graph_errors
def fuse_instances(
    detector: str | Path, head: str | Path | HeadSource, out: str | Path = DEFAULT_FUSED_MODEL,
    detections: str | None = None, det_format: str | None = None, params: InstanceParams = InstanceParams(),
    feature_tensor: str | None = None, opset: int | None = None, simplify: bool = True, strict: bool = False,
    check_images: Sequence[str | Path] | None = None, outputs: Sequence[str] = DEFAULT_OUTPUTS,
    decoded: bool | None = None,
) -> InstanceFuseReport:
    """Build, finish and write the instance model to ``out``; nothing is written when a check fails."""
    out = Path(out)
    build = build_instances(detector, head, detections, det_format, params, feature_tensor, opset, strict, outputs, decoded)
    model, note = finish_instances(build, simplify, check_images)
    if gt.needs_external_data(model):
        raise InputError("the instance model is over 2 GB; write the ROI model with roiseg fuse instead")
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    gt.save_model(model, out)
    io = gt.describe_io(model)
    LOG.info("wrote %s", out)
    return InstanceFuseReport(out, io["inputs"], io["outputs"], build.spec, build.params, len(model.graph.node),
                              build.nodes_merged, note, build.warnings)
