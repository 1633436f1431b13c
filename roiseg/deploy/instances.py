"""Image -> person instances in one ONNX: the detector's boxes, NMS and the masks in one graph.

``images`` [1, 3, H, W] (or the raw ``image``) -> ``boxes`` [K, 4], ``scores`` [K], ``classes`` [K]
(int64) and the mask outputs of the ROI model (``masks`` [K, 3, H, W] by default) for those boxes.
``boxes`` are normalised x1y1x2y2, or pixels of the original image with the raw-image input.

Built from the one build pipeline (``roiseg fuse --instances``):

1. :func:`roiseg.deploy.fuse.build_fused` gives the ROI model (``images`` + ``rois`` -> masks,
   unsimplified) whose trimmed detector also keeps the detection tensor as an output
   (``keep_tensors``): the detector runs once, and with the raw-image input it reads the in-graph
   preprocessed image like the head.
2. The post-processing graph (:mod:`roiseg.deploy.detections_onnx`) is spliced behind that output,
   and its normalised boxes replace the ``rois`` input (:func:`graph_tools.loop_back`; the internal
   tensor keeps the name ``rois``).
3. :func:`roiseg.deploy.fuse.finish_fused` simplifies (verified on images only), converts to float16
   with ``--fp16`` and writes the metadata: the ROI model's plus ``roiseg.instances``.

A head trained with another preprocessing than the detector wants (``det_preprocessing``, e.g.
YOLOX's BGR 0..255 under a head trained on RGB / 255) cannot share one detector run: the detection
path is then a second copy of the detector (names under :data:`DET_PREFIX`) fed by the head's
``images`` converted in the graph (:func:`roiseg.deploy.raw_input.conversion_model`; with the raw
input, the raw image preprocessed for the detector). The detector then runs twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import onnx

import graph_tools as gt
from roiseg.conventions import (
    DEFAULT_FUSED_MODEL, DEFAULT_IMAGE_INPUT, DEFAULT_OUTPUTS, DETECTOR_PREFIX, FUSED_ROIS_INPUT, INSTANCE_AXIS,
    INSTANCE_OUTPUTS, POST_PREFIX, RAW_IMAGE_INPUT, Preprocessing,
)
from roiseg.deploy.detections import ROW_LAYOUTS, DetectionSpec, InstanceParams, detection_spec
from roiseg.deploy.detections_onnx import postprocess_model
from roiseg.deploy.export import output_tensors
from roiseg.deploy.fuse import FusedBuild, build_fused, finish_and_write, full_check
from roiseg.deploy.fuse_report import FuseReport
from roiseg.deploy.head_source import HeadSource, load_head_source
from roiseg.deploy.metadata import KEY_INSTANCES, write_metadata
from roiseg.deploy.raw_input import DETECTOR_IMAGES, conversion_model, preprocessing_model
from roiseg.errors import InputError, translate_graph_errors
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

ROI_FEED: str = "rois_feed"
"""Post-processing output that becomes the ROI model's ``rois`` (the normalised boxes)."""
DET_PREFIX: str = "roiseg_det/"
"""Prefix of the second detector copy (only with a detector preprocessing other than the head's)."""
DET_PRE_PREFIX: str = "pre/"
DETECTOR_INPUT: str = "detector_input"
DET_PREPROCESSED: str = DET_PREFIX + DET_PRE_PREFIX + DETECTOR_IMAGES
"""In a model with a second detector copy: the image as that detector reads it (tensor input)."""
DET_PREPROCESSED_RAW: str = DET_PREFIX + DET_PRE_PREFIX + DEFAULT_IMAGE_INPUT
"""The same with the raw-image input."""


class InstanceProps(NamedTuple):
    """What ``roiseg.instances`` records: how the detections are read and kept, and the detector's
    preprocessing when it is not the head's (``None``: the one ``images`` serves both)."""

    spec: DetectionSpec
    params: InstanceParams
    det_preprocessing: Preprocessing | None = None


@dataclass
class InstanceBuild:
    """An unsimplified instance model (``build.model``, with the ROI model's metadata) and how it reads detections."""

    build: FusedBuild
    props: InstanceProps

    @property
    def detector_runs(self) -> int:
        return 1 if self.props.det_preprocessing is None else 2


def instances_json(props: InstanceProps) -> str:
    """The ``roiseg.instances`` value of ``props``."""
    pre = props.det_preprocessing
    return json.dumps({"detections": json.loads(props.spec.to_json()), "params": json.loads(props.params.to_json()),
                       "det_preprocessing": json.loads(pre.to_json()) if pre is not None else None}, sort_keys=True)


def parse_instances(text: str) -> InstanceProps:
    """Inverse of :func:`instances_json`."""
    d = json.loads(text)
    p, pre = d["params"], d.get("det_preprocessing")
    return InstanceProps(
        DetectionSpec.from_json(json.dumps(d["detections"])),
        InstanceParams(tuple(p["person_classes"]), p["score_threshold"], p["iou_threshold"], p["max_instances"]),
        Preprocessing.from_json(json.dumps(pre)) if pre is not None else None)


def read_instance_props(model: onnx.ModelProto) -> InstanceProps | None:
    """The :class:`InstanceProps` of an instance model; ``None`` for a ROI model."""
    text = gt.read_props(model).get(KEY_INSTANCES)
    return parse_instances(text) if text is not None else None


def _output_dims(model: onnx.ModelProto, name: str) -> list:
    return next(gt.dims(o) for o in model.graph.output if o.name == name)


def detection_copy(original: onnx.ModelProto, spec: DetectionSpec, opset: int, head_pre: Preprocessing,
                   det_pre: Preprocessing, input_hw: tuple[int, int], raw: bool) -> onnx.ModelProto:
    """The detector cut at its detections, at ``opset``, fed by the head's ``images`` converted to
    ``det_pre`` (with ``raw``: by the raw ``image`` preprocessed with ``det_pre``)."""
    detector = gt.convert_opset(gt.trim_at_tensor(original, [spec.tensor]), opset, "detector (detection path)")
    inputs = gt.graph_inputs(detector)
    if len(inputs) != 1:
        raise InputError(f"the detector has {len(inputs)} inputs; expected one image input")
    gt.rename_tensors(detector.graph, {inputs[0].name: DETECTOR_INPUT})
    if raw:
        pre, pre_out = preprocessing_model(input_hw, det_pre, opset, detector.ir_version), DEFAULT_IMAGE_INPUT
    else:
        pre, pre_out = conversion_model(input_hw, head_pre, det_pre, opset, detector.ir_version), DETECTOR_IMAGES
    return gt.feed_input(detector, DETECTOR_INPUT, pre, pre_out, prefix=DET_PRE_PREFIX)


@translate_graph_errors
def build_instances(
    detector: str | Path, head: str | Path | HeadSource, detections: str | None = None, det_format: str | None = None,
    params: InstanceParams = InstanceParams(), feature_tensor: str | None = None, opset: int | None = None,
    strict: bool = False, outputs: Sequence[str] = DEFAULT_OUTPUTS, decoded: bool | None = None,
    image_input: str = "tensor", det_preprocessing: Preprocessing | None = None,
) -> InstanceBuild:
    """The unsimplified instance model (see the module docstring); nothing is written.

    ``detections``/``det_format``/``decoded``: :func:`roiseg.deploy.detections.detection_spec`
    (the detector's detection output and its format, found from shapes and metadata by default).
    ``det_preprocessing``: what the detector wants when the head was trained with another
    preprocessing (``None``: the head's). The other arguments are :func:`build_fused`'s.
    """
    source = head if isinstance(head, HeadSource) else load_head_source(head)
    original = gt.load_model(detector)
    spec = detection_spec(original, detections, det_format, decoded)
    params.check(spec)
    if det_preprocessing == source.preprocessing:
        det_preprocessing = None
    nms = "no NMS" if spec.format in ROW_LAYOUTS else f"IoU > {params.iou_threshold:g} suppressed"
    LOG.info("detections: %s (%s, %d classes); persons %s, score > %g, %s, at most %d", spec.tensor, spec.format,
             spec.num_classes, list(params.person_classes), params.score_threshold, nms, params.max_instances)
    roi = build_fused(detector, source, feature_tensor=feature_tensor, opset=opset, strict=strict, outputs=outputs,
                      image_input=image_input, keep_tensors=() if det_preprocessing else (spec.tensor,))
    raw = roi.meta.image_input == "raw"
    image = RAW_IMAGE_INPUT if raw else DEFAULT_IMAGE_INPUT
    order = (image, FUSED_ROIS_INPUT)
    model, det_out, det_shape = roi.model, spec.tensor, None
    if det_preprocessing is None:
        det_shape = _output_dims(roi.detector, spec.tensor)
    else:
        LOG.info("the detector wants %s, the head was trained on %s: the detection path is a second detector copy",
                 det_preprocessing.to_json(), source.preprocessing.to_json())
        copy = detection_copy(original, spec, roi.opset, source.preprocessing, det_preprocessing, roi.meta.input_hw, raw)
        det_shape = _output_dims(copy, spec.tensor)
        model = gt.splice(model, copy, {}, share_inputs={image: image}, public={}, prefix=DET_PREFIX,
                          clash_prefix=DETECTOR_PREFIX, input_order=order, producer_name="roiseg")
        det_out = DET_PREFIX + spec.tensor
    post = postprocess_model(spec, params, roi.opset, model.ir_version, det_shape, roi_feed=ROI_FEED,
                             image_input=RAW_IMAGE_INPUT if raw else None)
    model = gt.splice(model, post, {det_out: spec.tensor}, share_inputs={image: image} if raw else {},
                      public={name: name for name in INSTANCE_OUTPUTS}, prefix=POST_PREFIX,
                      clash_prefix=DETECTOR_PREFIX, input_order=order, producer_name="roiseg")
    model = gt.loop_back(model, POST_PREFIX + ROI_FEED, FUSED_ROIS_INPUT)
    masks = output_tensors(roi.meta.outputs)
    kept = [o for o in model.graph.output if o.name in (*INSTANCE_OUTPUTS, *masks)]
    del model.graph.output[:]  # the instance outputs first, then the masks (a kept detection tensor goes)
    model.graph.output.extend(sorted(kept, key=lambda o: (*INSTANCE_OUTPUTS, *masks).index(o.name)))
    for vi in model.graph.output:  # the masks are per instance
        if vi.name in masks and vi.type.tensor_type.shape.dim:
            vi.type.tensor_type.shape.dim[0].Clear()
            vi.type.tensor_type.shape.dim[0].dim_param = INSTANCE_AXIS
    props = InstanceProps(spec, params, det_preprocessing)
    roi.meta.instances = instances_json(props)
    write_metadata(model, roi.meta)
    full_check(model)
    build = FusedBuild(model, roi.detector, roi.meta, roi.opset, roi.head, roi.detector_path, roi.warnings)
    return InstanceBuild(build, props)


def instance_notes(props: InstanceProps, detector_runs: int) -> list[str]:
    """What a report says about the instance part of a model."""
    spec, params = props.spec, props.params
    nms = "no NMS (the detector's rows are final)" if spec.format in ROW_LAYOUTS else f"NMS IoU {params.iou_threshold:g}"
    notes = [f"instances: detections {spec.tensor} ({spec.format}); person classes {list(params.person_classes)}, "
             f"score > {params.score_threshold:g}, {nms}, at most {params.max_instances}"]
    if props.det_preprocessing is not None:
        notes.append(f"the detector reads its own preprocessing {props.det_preprocessing.to_json()} "
                     f"(a second detector copy: it runs {detector_runs} times)")
    return notes


@translate_graph_errors
def fuse_instances(
    detector: str | Path, head: str | Path | HeadSource, out: str | Path = DEFAULT_FUSED_MODEL,
    detections: str | None = None, det_format: str | None = None, params: InstanceParams = InstanceParams(),
    feature_tensor: str | None = None, opset: int | None = None, simplify: bool = True, strict: bool = False,
    check_images: Sequence[str | Path] | None = None, outputs: Sequence[str] = DEFAULT_OUTPUTS,
    decoded: bool | None = None, fp16: bool = False, image_input: str = "tensor",
    det_preprocessing: Preprocessing | None = None,
) -> FuseReport:
    """Build (:func:`build_instances`), finish (:func:`roiseg.deploy.fuse.finish_fused`) and write the
    instance model to ``out``; nothing is written when a check fails."""
    result = build_instances(detector, head, detections, det_format, params, feature_tensor, opset, strict, outputs,
                             decoded, image_input, det_preprocessing)
    result.build.notes.extend(instance_notes(result.props, result.detector_runs))
    return finish_and_write(result.build, out, simplify, check_images, fp16)
