"""The one rebuild of parity: the reference a fused file is checked against comes from the one build
pipeline (:mod:`roiseg.export.fuse`), so a new fuse step is always under parity."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnx

import graph_tools as gt
from roiseg.export.fuse import FusedBuild, build_fused
from roiseg.export.head_source import HeadSource
from roiseg.export.options import FuseOptions
from roiseg.errors import InputError
from roiseg.runtime.metadata import FusedMetadata, read_metadata
from roiseg.utils.files import stamped_key
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)


def rebuild_reference(detector: str | Path, head: HeadSource, fused: str | Path) -> tuple[FusedBuild, FusedMetadata]:
    """The unsimplified ROI model built from ``detector`` and ``head`` as ``roiseg fuse`` built ``fused``:
    with that file's feature tensor, opset, output modes and image input (an instance model's ROI model),
    and the file's metadata. Warns when the file was built from another detector file (sha256); InputError
    when it was built from another head (its ``roiseg.head_sha256``)."""
    meta = read_metadata(fused)
    if meta.head_sha256 and head.sha256 and meta.head_sha256 != head.sha256:
        raise InputError(f"{fused} was not built from the head {head.path}: its metadata records head sha256 "
                         f"{meta.head_sha256[:12]}..., that file has {head.sha256[:12]}...; give the checkpoint it "
                         "was fused from")
    opset = gt.default_opset(gt.load_model(fused, load_external_data=False))
    options = FuseOptions(feature_tensor=meta.feature_tensor, opset=opset, outputs=meta.outputs,
                          image_input=meta.image_input)
    build = build_fused(detector, head, options)
    if meta.extractor_sha256 != build.meta.extractor_sha256:
        LOG.warning("%s was built from another detector file than %s (sha256 differs)", fused, detector)
    return build, meta


EXPOSED_CACHE_SIZE: int = 4
"""Exposed detectors kept per process (serialized, :class:`graph_tools.ModelCache`), by file stamp
(:func:`roiseg.utils.files.stamped_key`) and tensors: parity-checks of several models of one detector in one process (or on two engines)
trim it once."""
_EXPOSED = gt.ModelCache(EXPOSED_CACHE_SIZE)


def exposed_feature_model(detector: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """The original detector, unchanged, with ``tensors`` listed as extra outputs.

    Every original output is kept (``trim_at_tensor(keep_original_outputs=True)``), so no node is
    removed: the tensors are computed by the original graph.
    """
    if set(tensors) <= {o.name for o in detector.graph.output}:
        return detector
    return gt.trim_at_tensor(detector, list(tensors), keep_original_outputs=True)


def exposed_detector(detector: str | Path | onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """:func:`exposed_feature_model` of the detector file (or model) ``detector``; for a file unchanged since
    (:func:`stamped_key`), the caller's own copy of the result kept under ``tensors`` (:data:`EXPOSED_CACHE_SIZE`)."""
    if isinstance(detector, onnx.ModelProto):
        return exposed_feature_model(detector, tensors)

    def build() -> tuple[onnx.ModelProto, None]:
        return exposed_feature_model(gt.load_model(detector), tensors), None

    return _EXPOSED.get_or_build(stamped_key(detector, tuple(tensors)), build)[0]
