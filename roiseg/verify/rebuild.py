"""The one rebuild of parity: the reference a fused file is checked against comes from the one build
pipeline (:mod:`roiseg.export.fuse`), so a new fuse step is always under parity."""

from __future__ import annotations

from pathlib import Path

import graph_tools as gt
from roiseg.export.fuse import FusedBuild, build_fused
from roiseg.export.head_source import HeadSource
from roiseg.export.options import FuseOptions
from roiseg.errors import InputError
from roiseg.runtime.metadata import FusedMetadata, read_metadata
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
