"""``roiseg fuse``: detector ONNX + trained head -> one ONNX model (``images`` + ``rois`` -> ``masks``).

The one build pipeline; ``parity-check`` checks the very model these steps produce.

1. :func:`build_fused`: read the head (:mod:`roiseg.export.head_source`); describe the detector
   at the feature tensor and check the head against it (:mod:`roiseg.features.compat`); trim the
   detector there; export the head; bring both to one opset; splice with one shared image input;
   write metadata; full ``onnx.checker``. Nothing is written.
2. :func:`finish_fused`: simplify with onnxslim (onnxsim as fallback), verified on realistic inputs
   (:mod:`roiseg.export.probes`), and write the final metadata.
3. :func:`fuse`: both, then save atomically. Nothing is written before every check passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import onnx

import graph_tools as gt
from roiseg.conventions import (
    DEFAULT_FEATURE_TENSOR, DEFAULT_FUSED_MODEL, DEFAULT_HEAD_OPSET, DEFAULT_IMAGE_INPUT, DETECTOR_PREFIX,
    DEFAULT_OUTPUTS, FUSED_ROIS_INPUT, HEAD_FEATURES_INPUT, HEAD_PREFIX, MIN_HEAD_OPSET, PREPROCESSED_TENSOR,
    RAW_IMAGE_INPUT, ImageInput, Preprocessing, extra_features_input, output_modes, output_tensors,
)
from roiseg.errors import InputError, translate_graph_errors
from roiseg.export.head_source import HeadSource, load_head_source
from roiseg.export.options import FuseOptions, split_options
from roiseg.export.precision import to_float16
from roiseg.export.int8 import calibration_files, quantize_int8, quantized_ops
from roiseg.export.probes import model_feeds
from roiseg.export.raw_input import PRE_PREFIX, check_raw_preprocessing, preprocessing_model
from roiseg.export.report import FuseReport
from roiseg.export.tensorrt import tensorrt_notes
from roiseg.export.wrapper import HEAD_OPSET_REASON
from roiseg.features.compat import check_head_features
from roiseg.features.extractor import ExtractorInfo, describe_extractor
from roiseg.runtime.metadata import FusedMetadata, detector_props, write_metadata
from roiseg.utils.atomic import ensure_writable_dir
from roiseg.utils.files import stamped_key
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
    """What the float16 or int8 conversion did (empty for a float32 model)."""
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
    the preprocessing (:mod:`roiseg.export.raw_input`): the raw ``image`` feeds it and the head's
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


def prepend_preprocessing(trimmed: onnx.ModelProto, input_hw: tuple[int, int], pre: Preprocessing,
                          keep_images: bool) -> onnx.ModelProto:
    """The trimmed detector fed by the in-graph preprocessing of a raw ``image`` (``--image-input raw``)."""
    inputs = gt.graph_inputs(trimmed)
    if len(inputs) != 1:
        raise InputError(f"the trimmed detector has {len(inputs)} inputs; expected one image input")
    pre_model = preprocessing_model(input_hw, pre, gt.default_opset(trimmed), trimmed.ir_version)
    return gt.feed_input(trimmed, inputs[0].name, pre_model, DEFAULT_IMAGE_INPUT, prefix=PRE_PREFIX,
                         keep_as_output=keep_images)


def _described(path: Path, source: HeadSource, options: FuseOptions) -> tuple[str, ExtractorInfo, list[str]]:
    """The feature tensor, the detector described there, and the head/detector compatibility warnings."""
    tensor = options.feature_tensor or source.feature_tensor or DEFAULT_FEATURE_TENSOR
    if tensor in source.extra_tensors:
        raise InputError(f"feature tensor {tensor!r} is one of the extra taps the head {source.path.name} reads "
                         f"({', '.join(source.extra_tensors)}); its primary tensor is "
                         f"{source.feature_tensor or DEFAULT_FEATURE_TENSOR!r}: give that, or leave the feature tensor out")
    info = describe_extractor(path, tensor, source.preprocessing, extra_tensors=source.extra_tensors)
    warnings = check_head_features(source.cfg, source.extractor, info, source.path, options.strict)
    for note in warnings:
        LOG.warning(note)
    return tensor, info, warnings


TRIM_CACHE_SIZE: int = 4
"""Trimmed detectors kept per process (serialized, :class:`graph_tools.ModelCache`), by file stamp
(:func:`roiseg.utils.files.stamped_key`), tensors and opset: ``fuse`` and the ``parity-check`` that rebuilds its reference, or
several fuses of one detector, trim it once."""
_TRIMS = gt.ModelCache(TRIM_CACHE_SIZE)


def _trimmed(path: Path, tensors: Sequence[str], source: HeadSource,
             opset: int | None) -> tuple[onnx.ModelProto, int, dict[str, str]]:
    """The detector at ``path`` cut at ``tensors``, its opset brought to ``opset`` (default: the higher of the
    detector's and the head's, at least ``MIN_HEAD_OPSET``), and its own metadata (:func:`detector_props`).
    When ``path`` is unchanged since (:func:`stamped_key`): the caller's own copy of the cached result, and the
    detector is not read again (:data:`TRIM_CACHE_SIZE`)."""
    head_opset = gt.default_opset(source.onnx) if source.onnx is not None else DEFAULT_HEAD_OPSET

    def build() -> tuple[onnx.ModelProto, tuple[int, dict[str, str]]]:
        original = gt.load_model(path)
        props = detector_props(original)
        LOG.info("trimming %s at %s", path.name, ", ".join(tensors))
        trimmed = gt.trim_at_tensor(original, list(tensors))
        del original
        target = opset if opset is not None else max(gt.default_opset(trimmed), head_opset, MIN_HEAD_OPSET)
        return gt.convert_opset(trimmed, target, f"detector {path}"), (target, props)

    key = stamped_key(path, tuple(tensors), opset, head_opset)
    model, (target, props) = _TRIMS.get_or_build(key, build)
    return model, target, dict(props)


@translate_graph_errors
def build_fused(detector: str | Path, head: str | Path | HeadSource, options: FuseOptions = FuseOptions(),
                keep_tensors: Sequence[str] = ()) -> FusedBuild:
    """Step 1 of the module docstring; returns the unsimplified model (``options``: :class:`FuseOptions`;
    its ``simplify``, ``fp16`` and ``check_images`` are step 2's).

    ``keep_tensors``: detector tensors the trimmed detector keeps as well, as extra outputs of the
    model under their own names (the instance model reads the detections this way). InputError for an
    unknown output mode or image input, an opset below 16, or a head that does not fit the detector
    (``options.strict``: also one recorded with another detector file or tensor).
    """
    modes = output_modes(options.outputs)
    image_input = ImageInput.parse(options.image_input)
    raw = image_input is ImageInput.RAW
    if options.opset is not None:
        gt.validate_opset(options.opset, MIN_HEAD_OPSET, HEAD_OPSET_REASON)
    source = head if isinstance(head, HeadSource) else load_head_source(head)
    if raw:
        check_raw_preprocessing(source.preprocessing)
    path = Path(detector)
    tensor, info, warnings = _described(path, source, options)
    extras = source.extra_tensors
    keep = [t for t in keep_tensors if t not in (tensor, *extras)]
    trimmed, target, props = _trimmed(path, [tensor, *extras, *keep], source, options.opset)
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
        head_config=source.cfg.to_dict(), head_sha256=source.sha256, extra=props, outputs=modes,
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


def finish_fused(build: FusedBuild, options: FuseOptions = FuseOptions()) -> tuple[onnx.ModelProto, str]:
    """Step 2: the model to write (simplified when verified, ``options.simplify``; with ``options.fp16``,
    float16 compute where safe, :mod:`roiseg.export.precision`) and a note on what was done. The checks
    run on ``options.check_images`` (a synthetic image by default) and the robust contract's ROI sets."""
    model = gt.dedupe_opset_imports(build.model)
    names = [vi.name for vi in gt.graph_inputs(model)]
    feeds = []
    if options.simplify or options.fp16:
        feeds = model_feeds(build.meta.input_hw, build.meta.preprocessing, build.meta.image_input, names,
                            options.check_images)
    if options.simplify:
        result = gt.simplify_verified(model, feeds)
        model, note = result.model, result.note
        if not result.simplified:
            build.warnings.append(f"kept the unsimplified model: {note}")
        build.meta.simplified, build.meta.simplifier = result.simplified, result.tool
    else:
        note = "simplification switched off"
        build.meta.simplified, build.meta.simplifier = False, ""
    build.meta.fp16 = options.fp16
    if options.fp16:
        model, build.precision_note = to_float16(model, feeds)
        LOG.info(build.precision_note)
    if options.int8:
        model, build.precision_note = _int8(model, build, options, names)
        LOG.info(build.precision_note)
    write_metadata(model, build.meta)
    return model, note


def _int8(model: onnx.ModelProto, build: FusedBuild, options: FuseOptions, names: Sequence[str]) -> tuple[onnx.ModelProto, str]:
    """The int8 model (:mod:`roiseg.export.int8`), calibrated on ``options.calibration_images``."""
    if options.fp16:
        raise InputError("--int8 and --fp16 exclude each other: an int8 model keeps float32 between its int8 ops")
    if options.calibration_images is None:
        raise InputError("--int8 needs --calibration-images DIR (real images to calibrate the ranges on)")
    files = calibration_files(options.calibration_images, options.calibration_count)
    meta = build.meta
    feeds = model_feeds(meta.input_hw, meta.preprocessing, meta.image_input, names, files, contract=False)
    build.meta.int8 = "head" if options.int8 == "all" and quantized_ops(model) else options.int8
    return quantize_int8(model, options.int8, feeds)


@translate_graph_errors
def fuse(detector: str | Path, head: str | Path | HeadSource, out: str | Path = DEFAULT_FUSED_MODEL,
         options: FuseOptions | None = None, **changes: Any) -> FuseReport:
    """Build the fused model from ``detector`` (full detector or featext) and ``head``; write it to ``out``.

    ``options``: :class:`FuseOptions` (defaults when ``None``); ``changes``: fields of it to set, e.g.
    ``fuse(det, head, out, simplify=False, outputs=("labels",))``. Raises :class:`InputError` for bad
    input; writes nothing then.
    """
    options, _ = split_options(changes, options)
    return finish_and_write(build_fused(detector, head, options), out, options)


def finish_and_write(build: FusedBuild, out: str | Path, options: FuseOptions = FuseOptions()) -> FuseReport:
    """Step 2 on a built model (:func:`finish_fused`), then save it atomically to ``out``; what was written."""
    out = Path(out)
    nodes_before = len(build.model.graph.node)
    model, note = finish_fused(build, options)
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
