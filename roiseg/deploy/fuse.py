"""``roiseg fuse``: detector ONNX + trained head -> one ONNX model (``images`` + ``rois`` -> ``masks``).

The one build pipeline; ``parity-check`` checks the very model these steps produce.

1. :func:`build_fused`: read the head (:mod:`roiseg.deploy.head_source`); describe the detector
   at the feature tensor and check the head against it (:mod:`roiseg.features.compat`); trim the
   detector there; export the head; bring both to one opset; splice with one shared image input;
   write metadata; full ``onnx.checker``. Nothing is written.
2. :func:`finish_fused`: simplify with onnxslim (onnxsim as fallback), verified on realistic inputs
   (:mod:`roiseg.deploy.probes`), and write the final metadata.
3. :func:`fuse`: both, then save atomically. Nothing is written before every check passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

import graph_tools as gt
from roiseg.conventions import (
    DEFAULT_FEATURE_TENSOR, DEFAULT_FUSED_MODEL, DEFAULT_HEAD_OPSET, DEFAULT_IMAGE_INPUT, DETECTOR_PREFIX,
    DEFAULT_OUTPUTS, FUSED_ROIS_INPUT, HEAD_FEATURES_INPUT, HEAD_PREFIX, IMAGE_INPUT_MODES, MIN_HEAD_OPSET,
    PREPROCESSED_TENSOR, RAW_IMAGE_INPUT, extra_features_input,
)
from roiseg.deploy.export import AWKWARD_ROIS, HEAD_OPSET_REASON, output_modes, output_tensors
from roiseg.deploy.engines import tensorrt_notes
from roiseg.deploy.fuse_report import FuseReport
from roiseg.deploy.head_source import HeadSource, load_head_source
from roiseg.deploy.metadata import FusedMetadata, detector_props, write_metadata
from roiseg.deploy.precision import to_float16
from roiseg.deploy.raw_input import PRE_PREFIX, check_raw_preprocessing, preprocessing_model, raw_from_tensor
from roiseg.deploy.probes import check_feeds
from roiseg.errors import InputError, translate_graph_errors
from roiseg.features.compat import check_head_features
from roiseg.features.extractor import describe_extractor
from roiseg.utils.atomic import ensure_writable_dir
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)


@dataclass
class FusedBuild:
    """An unsimplified fused model and what it was built from (in memory, nothing written)."""

    model: onnx.ModelProto
    detector: onnx.ModelProto
    """The trimmed detector at the fused model's opset (the exact detector path inside ``model``)."""
    meta: FusedMetadata
    opset: int
    head: HeadSource
    detector_path: Path
    warnings: list[str] = field(default_factory=list)
    precision_note: str = ""
    """What the float16 conversion did (empty for a float32 model)."""
    notes: list[str] = field(default_factory=list)


@translate_graph_errors
def splice_head(detector: onnx.ModelProto, head: onnx.ModelProto, feature_tensor: str,
                extra_tensors: Sequence[str] = (), outputs: Sequence[str] = DEFAULT_OUTPUTS,
                raw: bool = False) -> onnx.ModelProto:
    """The trimmed detector and the exported head as one graph: ``images`` + ``rois`` -> ``masks``.

    The detector's only input becomes ``images`` (batch pinned to 1: every ROI refers to the one
    image) and also feeds the head's image input (detail, query), so the detector runs once. The
    feature tensor feeds the head's ``features``, extra tap ``i`` its ``features_i``. The outputs
    of the ``outputs`` modes keep their public names. With ``raw`` the detector already starts with
    the preprocessing (:mod:`roiseg.deploy.raw_input`): the raw ``image`` feeds it and the head's
    ``image``, the preprocessed tensor the head's ``images``.
    """
    inputs = gt.graph_inputs(detector)
    if len(inputs) != 1:
        names = ", ".join(vi.name for vi in inputs)
        raise InputError(f"the trimmed detector has {len(inputs)} inputs ({names}); expected one image input")
    connect = {feature_tensor: HEAD_FEATURES_INPUT,
               **{t: extra_features_input(i) for i, t in enumerate(extra_tensors, start=1)}}
    if raw:
        if DEFAULT_IMAGE_INPUT in {vi.name for vi in head.graph.input}:
            connect[PREPROCESSED_TENSOR] = DEFAULT_IMAGE_INPUT
        ends = {"share_inputs": {RAW_IMAGE_INPUT: RAW_IMAGE_INPUT}, "pin_batch_of": ()}
    else:
        ends = {"rename_first_inputs": {inputs[0].name: DEFAULT_IMAGE_INPUT}, "pin_batch_of": (DEFAULT_IMAGE_INPUT,),
                "share_inputs": {DEFAULT_IMAGE_INPUT: DEFAULT_IMAGE_INPUT}}
    return gt.splice(
        detector, head, connect, **ends,
        public={FUSED_ROIS_INPUT: FUSED_ROIS_INPUT, **{name: name for name in output_tensors(outputs)}},
        prefix=HEAD_PREFIX, clash_prefix=DETECTOR_PREFIX,
        input_order=(RAW_IMAGE_INPUT if raw else DEFAULT_IMAGE_INPUT, FUSED_ROIS_INPUT), producer_name="roiseg",
    )


def prepend_preprocessing(trimmed: onnx.ModelProto, input_hw: tuple[int, int], pre, keep_images: bool) -> onnx.ModelProto:
    """The trimmed detector fed by the in-graph preprocessing of a raw ``image`` (``--image-input raw``)."""
    inputs = gt.graph_inputs(trimmed)
    if len(inputs) != 1:
        raise InputError(f"the trimmed detector has {len(inputs)} inputs; expected one image input")
    pre_model = preprocessing_model(input_hw, pre, gt.default_opset(trimmed), trimmed.ir_version)
    return gt.feed_input(trimmed, inputs[0].name, pre_model, DEFAULT_IMAGE_INPUT, prefix=PRE_PREFIX,
                         keep_as_output=keep_images)


@translate_graph_errors
def build_fused(
    detector: str | Path, head: str | Path | HeadSource, feature_tensor: str | None = None,
    opset: int | None = None, strict: bool = False, outputs: Sequence[str] = DEFAULT_OUTPUTS,
    image_input: str = "tensor", keep_tensors: Sequence[str] = (),
) -> FusedBuild:
    """Step 1 of the module docstring; returns the unsimplified model.

    ``outputs``: output modes (``conventions.OUTPUT_MODES``; :class:`InputError` for an unknown one).
    ``image_input``: ``tensor`` (``images`` [1, 3, H, W], preprocessed by the caller) or ``raw``
    (``image`` uint8 [H0, W0, 3] BGR, preprocessed in the graph, masks at H0 x W0).
    ``keep_tensors``: detector tensors the trimmed detector keeps as well, as extra outputs of the
    model under their own names (the instance model reads the detections this way).

    ``feature_tensor`` defaults to the tensor recorded with the head; ``opset`` to the higher of
    the detector's and the head's (at least 16); ``strict`` refuses a head recorded with another
    detector file or tensor (:func:`roiseg.features.compat.check_head_features`).
    """
    modes = output_modes(outputs)
    if image_input not in IMAGE_INPUT_MODES:
        raise InputError(f"unknown image input {image_input!r}; expected one of {', '.join(IMAGE_INPUT_MODES)}")
    raw = image_input == "raw"
    if opset is not None:
        gt.validate_opset(opset, MIN_HEAD_OPSET, HEAD_OPSET_REASON)
    source = head if isinstance(head, HeadSource) else load_head_source(head)
    if raw:
        check_raw_preprocessing(source.preprocessing)
    path = Path(detector)
    tensor = feature_tensor or source.feature_tensor or DEFAULT_FEATURE_TENSOR
    extras = source.extra_tensors
    info = describe_extractor(path, tensor, source.preprocessing, extra_tensors=extras)
    warnings = check_head_features(source.cfg, source.extractor, info, source.path, strict)
    for note in warnings:
        LOG.warning(note)

    original = gt.load_model(path)
    keep = [t for t in keep_tensors if t not in (tensor, *extras)]
    LOG.info("trimming %s at %s", path.name, ", ".join([tensor, *extras, *keep]))
    trimmed = gt.trim_at_tensor(original, [tensor, *extras, *keep])
    head_opset = gt.default_opset(source.onnx) if source.onnx is not None else DEFAULT_HEAD_OPSET
    target = opset if opset is not None else max(gt.default_opset(trimmed), head_opset, MIN_HEAD_OPSET)
    trimmed = gt.convert_opset(trimmed, target, f"detector {path}")
    LOG.info("exporting the head (%s variant) at opset %d", source.cfg.variant, target)
    head_onnx = source.to_onnx(target, modes, raw)
    first = trimmed
    if raw:
        first = prepend_preprocessing(trimmed, info.input_hw, source.preprocessing,
                                      DEFAULT_IMAGE_INPUT in {vi.name for vi in head_onnx.graph.input})
    fused = splice_head(first, head_onnx, tensor, extras, modes, raw)
    meta = FusedMetadata(
        extractor_file=path.name, extractor_sha256=info.sha256, feature_tensor=tensor, extra_tensors=tuple(extras),
        input_hw=info.input_hw, stride=info.stride, preprocessing=source.preprocessing,
        head_config=source.cfg, head_sha256=source.sha256, extra=detector_props(original), outputs=modes,
        image_input=image_input,
    )
    write_metadata(fused, meta)
    full_check(fused)
    return FusedBuild(fused, trimmed, meta, target, source, path, warnings)


def full_check(model: onnx.ModelProto, path: str | Path | None = None) -> None:
    """``onnx.checker`` with ``full_check`` (shape inference); by path for models over 2 GB."""
    if gt.needs_external_data(model):
        if path is not None:
            onnx.checker.check_model(str(path), full_check=True)
        return
    onnx.checker.check_model(model, full_check=True)


def contract_roi_sets() -> list[np.ndarray]:
    """ROI sets of the robust contract: zero ROIs, and the awkward boxes (outside, reversed, non-finite)."""
    return [np.zeros((0, 4), np.float32), np.asarray(AWKWARD_ROIS, np.float32)]


def raw_feeds(feeds: list[dict[str, np.ndarray]], pre) -> list[dict[str, np.ndarray]]:
    """Feeds of a tensor-input model as feeds of the raw-image model (uint8 BGR at the input size);
    the second feed also at another size (1.5 x 1.25), so the dynamic image size is exercised."""
    out = []
    for i, feed in enumerate(feeds):
        raw = raw_from_tensor(feed[DEFAULT_IMAGE_INPUT], pre)
        if i == 1:
            raw = np.ascontiguousarray(np.repeat(np.repeat(raw, 3, axis=0)[::2], 5, axis=1)[:, ::4])
        out.append({RAW_IMAGE_INPUT: raw, FUSED_ROIS_INPUT: feed[FUSED_ROIS_INPUT]})
    return out


def contract_feeds(image: np.ndarray) -> list[dict[str, np.ndarray]]:
    """:func:`contract_roi_sets` on ``image``, as feeds of the fused model."""
    return [{DEFAULT_IMAGE_INPUT: image, FUSED_ROIS_INPUT: rois} for rois in contract_roi_sets()]


def model_feeds(build: FusedBuild, check_images: Sequence[str | Path] | None = None) -> list[dict[str, np.ndarray]]:
    """Feeds to verify the finished model on: :func:`check_feeds` and :func:`contract_feeds`, raw
    images for a raw-image model, and only the inputs the model has: without ``rois`` (an instance
    model finds its own boxes) each image once, plus a black one (no detections)."""
    feeds = check_feeds(build.meta.input_hw, build.meta.preprocessing, check_images)
    feeds += contract_feeds(feeds[0][DEFAULT_IMAGE_INPUT])
    if FUSED_ROIS_INPUT not in {vi.name for vi in gt.graph_inputs(build.model)}:
        images = list({id(f[DEFAULT_IMAGE_INPUT]): f[DEFAULT_IMAGE_INPUT] for f in feeds}.values())
        feeds = [{DEFAULT_IMAGE_INPUT: image, FUSED_ROIS_INPUT: np.zeros((0, 4), np.float32)}
                 for image in [*images, np.zeros_like(images[0])]]
    if build.meta.image_input == "raw":
        feeds = raw_feeds(feeds, build.meta.preprocessing)
    names = {vi.name for vi in gt.graph_inputs(build.model)}
    return [{k: v for k, v in feed.items() if k in names} for feed in feeds]


def finish_fused(
    build: FusedBuild, simplify: bool = True, check_images: Sequence[str | Path] | None = None, fp16: bool = False,
) -> tuple[onnx.ModelProto, str]:
    """Step 2: the model to write (simplified when verified; with ``fp16``, float16 compute where safe,
    :mod:`roiseg.deploy.precision`) and a note on what was done."""
    model = build.model
    feeds = model_feeds(build, check_images) if simplify or fp16 else []
    if simplify:
        result = gt.simplify_verified(model, feeds)
        model, note = result.model, result.note
        if not result.simplified:
            build.warnings.append(f"kept the unsimplified model: {note}")
        build.meta.simplified = result.simplified
        build.meta.simplifier = result.tool
    else:
        note = "simplification switched off"
        build.meta.simplified = False
        build.meta.simplifier = ""
    build.meta.fp16 = fp16
    if fp16:
        model, build.precision_note = to_float16(model, feeds)
        LOG.info(build.precision_note)
    write_metadata(model, build.meta)
    return model, note


@translate_graph_errors
def fuse(
    detector: str | Path,
    head: str | Path | HeadSource,
    feature_tensor: str | None = None,
    out: str | Path = DEFAULT_FUSED_MODEL,
    opset: int | None = None,
    simplify: bool = True,
    strict: bool = False,
    check_images: Sequence[str | Path] | None = None,
    outputs: Sequence[str] = DEFAULT_OUTPUTS,
    fp16: bool = False,
    image_input: str = "tensor",
) -> FuseReport:
    """Build the fused model from ``detector`` (full detector or featext) and ``head``; write it to ``out``.

    ``check_images`` are image files to verify the simplified model on (a synthetic image
    otherwise). ``outputs``: the output modes (``probs`` by default); ``fp16``: float16 compute where safe;
    ``image_input``: ``tensor`` or ``raw`` (see :func:`build_fused`). Raises :class:`InputError` for
    bad input; writes nothing then.
    """
    out = Path(out)
    build = build_fused(detector, head, feature_tensor=feature_tensor, opset=opset, strict=strict, outputs=outputs,
                        image_input=image_input)
    return finish_and_write(build, out, simplify, check_images, fp16)


def finish_and_write(build: FusedBuild, out: str | Path, simplify: bool = True,
                     check_images: Sequence[str | Path] | None = None, fp16: bool = False) -> FuseReport:
    """Step 2 on a built model (:func:`finish_fused`), then save it atomically to ``out``; what was written."""
    out = Path(out)
    nodes_before = len(build.model.graph.node)
    model, note = finish_fused(build, simplify, check_images, fp16)
    ensure_writable_dir(out.parent if str(out.parent) else Path("."))
    gt.save_model(model, out)
    if gt.needs_external_data(model):
        full_check(model, out)
    for trt_note in tensorrt_notes(model):
        (build.warnings.append if "does not take" in trt_note else build.notes.append)(trt_note)
        LOG.info(trt_note)
    io = gt.describe_io(model)
    size = out.stat().st_size + sum(p.stat().st_size for p in out.parent.glob(f"{out.name}.data"))
    LOG.info("wrote %s (%.1f MB)", out, size / 1e6)
    return FuseReport(
        out=out, inputs=io["inputs"], outputs=io["outputs"], opset=build.opset, ir_version=int(model.ir_version),
        nodes_before=nodes_before, nodes_after=len(model.graph.node), simplified=build.meta.simplified,
        simplify_note=note, precision_note=build.precision_note, file_bytes=size, meta=build.meta, warnings=build.warnings,
        notes=build.notes,
    )
