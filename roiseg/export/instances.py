"""Image -> person instances in one ONNX: the detector's boxes, NMS and the masks in one graph.

``images`` [1, 3, H, W] (or the raw ``image``) -> ``boxes`` [K, 4], ``scores`` [K], ``classes`` [K]
(int64) and the mask outputs of the ROI model (``masks`` [K, 3, H, W] by default) for those boxes.
``boxes`` are normalised x1y1x2y2, or pixels of the original image with the raw-image input.

Built from the one build pipeline (``roiseg fuse --instances``):

1. :func:`roiseg.export.fuse.build_fused` gives the ROI model (``images`` + ``rois`` -> masks,
   unsimplified) whose trimmed detector also keeps the detection tensor as an output
   (``keep_tensors``): the detector runs once, and with the raw-image input it reads the in-graph
   preprocessed image like the head.
2. The post-processing graph (:mod:`roiseg.detection.graph`) is spliced behind that output,
   and its normalised boxes replace the ``rois`` input (:func:`graph_tools.loop_back`; the internal
   tensor keeps the name ``rois``).
3. :func:`roiseg.export.fuse.finish_fused` simplifies (verified on images only), converts to float16
   with ``--fp16`` and writes the metadata: the ROI model's plus ``roiseg.instances``.

A head trained with another preprocessing than the detector wants (``det_preprocessing``, e.g.
YOLOX's BGR 0..255 under a head trained on RGB / 255) cannot share one detector run: the detection
path is then a second copy of the detector (names under :data:`DET_PREFIX`) fed by the head's
``images`` converted in the graph (:func:`roiseg.export.raw_input.conversion_model`; with the raw
input, the raw image preprocessed for the detector). The detector then runs twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

import graph_tools as gt
from roiseg.conventions import (
    DEFAULT_FUSED_MODEL, DEFAULT_IMAGE_INPUT, DETECTOR_PREFIX, FUSED_ROIS_INPUT, INSTANCE_AXIS, INSTANCE_OUTPUTS,
    POST_PREFIX, RAW_IMAGE_INPUT, ImageInput, Preprocessing, output_tensors,
)
from roiseg.detection.formats import DetectionSpec, detection_spec
from roiseg.detection.graph import postprocess_model
from roiseg.detection.props import InstanceProps
from roiseg.errors import InputError, translate_graph_errors
from roiseg.export.fuse import FusedBuild, build_fused, finish_and_write, full_check
from roiseg.export.head_source import HeadSource, load_head_source
from roiseg.export.instance_check import check_detections
from roiseg.export.options import FuseOptions, InstanceOptions, split_options
from roiseg.export.raw_input import DETECTOR_IMAGES, conversion_model, preprocessing_model
from roiseg.export.report import FuseReport
from roiseg.runtime.metadata import write_metadata
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


@dataclass
class InstanceBuild:
    """An unsimplified instance model (``build.model``, with the ROI model's metadata) and how it reads detections."""

    build: FusedBuild
    props: InstanceProps


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


def _splice_detections(roi: FusedBuild, original: onnx.ModelProto, props: InstanceProps,
                       head_pre: Preprocessing) -> onnx.ModelProto:
    """The ROI model with the post-processing spliced behind the detection tensor (of a second detector
    copy with a detector preprocessing of its own) and its normalised boxes looped back into ``rois``."""
    spec, raw = props.spec, roi.meta.image_input is ImageInput.RAW
    image = RAW_IMAGE_INPUT if raw else DEFAULT_IMAGE_INPUT
    order = (image, FUSED_ROIS_INPUT)
    model, det_out = roi.model, spec.tensor
    if props.det_preprocessing is None:
        det_shape = _output_dims(roi.detector, spec.tensor)
    else:
        LOG.info("the detector wants %s, the head was trained on %s: the detection path is a second detector copy",
                 props.det_preprocessing.to_json(), head_pre.to_json())
        copy = detection_copy(original, spec, roi.opset, head_pre, props.det_preprocessing, roi.meta.input_hw, raw)
        det_shape = _output_dims(copy, spec.tensor)
        model = gt.splice(model, copy, {}, share_inputs={image: image}, public={}, prefix=DET_PREFIX,
                          clash_prefix=DETECTOR_PREFIX, input_order=order, producer_name="roiseg")
        det_out = DET_PREFIX + spec.tensor
    post = postprocess_model(spec, props.params, roi.opset, model.ir_version, det_shape, roi_feed=ROI_FEED,
                             image_input=RAW_IMAGE_INPUT if raw else None)
    model = gt.splice(model, post, {det_out: spec.tensor}, share_inputs={image: image} if raw else {},
                      public={name: name for name in INSTANCE_OUTPUTS}, prefix=POST_PREFIX,
                      clash_prefix=DETECTOR_PREFIX, input_order=order, producer_name="roiseg")
    return gt.loop_back(model, POST_PREFIX + ROI_FEED, FUSED_ROIS_INPUT)


def _instance_outputs(model: onnx.ModelProto, modes: tuple[str, ...]) -> None:
    """Keep the instance outputs first, then the masks (a kept detection tensor goes); masks per instance."""
    masks = output_tensors(modes)
    kept = [o for o in model.graph.output if o.name in (*INSTANCE_OUTPUTS, *masks)]
    del model.graph.output[:]
    model.graph.output.extend(sorted(kept, key=lambda o: (*INSTANCE_OUTPUTS, *masks).index(o.name)))
    for vi in model.graph.output:
        if vi.name in masks and vi.type.tensor_type.shape.dim:
            vi.type.tensor_type.shape.dim[0].Clear()
            vi.type.tensor_type.shape.dim[0].dim_param = INSTANCE_AXIS


@translate_graph_errors
def build_instances(detector: str | Path, head: str | Path | HeadSource, options: FuseOptions | None = None,
                    instances: InstanceOptions | None = None, **changes: Any) -> InstanceBuild:
    """The unsimplified instance model (see the module docstring); nothing is written.

    ``options``: the ROI model's :class:`FuseOptions` (:func:`build_fused`); ``instances``:
    :class:`InstanceOptions` (the detection tensor and format, found from shapes and metadata by default;
    what is kept; the detector's own preprocessing); ``changes``: fields of either to set.
    """
    options, instances = split_options(changes, options, instances)
    source = head if isinstance(head, HeadSource) else load_head_source(head)
    original = gt.load_model(detector)
    spec = detection_spec(original, instances.detections, instances.det_format, instances.decoded)
    params = instances.params
    params.check(spec)
    det_pre = None if instances.det_preprocessing == source.preprocessing else instances.det_preprocessing
    props = InstanceProps(spec, params, det_pre)
    nms = f"IoU > {params.iou_threshold:g} suppressed" if props.suppressed else "no NMS"
    LOG.info("detections: %s (%s, %d classes); persons %s, score > %g, %s, at most %d", spec.tensor, spec.format,
             spec.num_classes, list(params.person_classes), params.score_threshold, nms, params.max_instances)
    roi = build_fused(detector, source, options, keep_tensors=() if det_pre else (spec.tensor,))
    model = _splice_detections(roi, original, props, source.preprocessing)
    _instance_outputs(model, roi.meta.outputs)
    roi.meta.instances = props
    write_metadata(model, roi.meta)
    full_check(model)
    build = FusedBuild(model, roi.detector, roi.meta, roi.opset, roi.head, roi.detector_path, roi.warnings)
    return InstanceBuild(build, props)


def instance_notes(props: InstanceProps) -> list[str]:
    """What a report says about the instance part of a model."""
    spec, params = props.spec, props.params
    nms = f"NMS IoU {params.iou_threshold:g}" if props.suppressed else "no NMS (the detector's rows are final)"
    notes = [f"instances: detections {spec.tensor} ({spec.format}); person classes {list(params.person_classes)}, "
             f"score > {params.score_threshold:g}, {nms}, at most {params.max_instances}"]
    if props.det_preprocessing is not None:
        notes.append(f"the detector reads its own preprocessing {props.det_preprocessing.to_json()} "
                     f"(a second detector copy: it runs {props.detector_runs} times)")
    return notes


@translate_graph_errors
def fuse_instances(detector: str | Path, head: str | Path | HeadSource, out: str | Path = DEFAULT_FUSED_MODEL,
                   options: FuseOptions | None = None, instances: InstanceOptions | None = None,
                   **changes: Any) -> FuseReport:
    """Build (:func:`build_instances`), check its detections on the check images
    (:func:`roiseg.export.instance_check.check_detections`), finish (:func:`roiseg.export.fuse.finish_fused`)
    and write the instance model to ``out``; nothing is written when a check fails. ``changes``: fields of
    :class:`FuseOptions` or :class:`InstanceOptions` to set, e.g. ``fuse_instances(det, head, out, fp16=True)``."""
    options, instances = split_options(changes, options, instances)
    result = build_instances(detector, head, options, instances)
    result.build.notes.extend(instance_notes(result.props))
    for warning in check_detections(result.build.model, result.build.meta, result.props, options):
        LOG.warning(warning)
        result.build.warnings.append(warning)
    return finish_and_write(result.build, out, options)
