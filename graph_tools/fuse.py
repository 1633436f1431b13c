"""``roiseg fuse``: detector ONNX + trained head -> one ONNX model (``images`` + ``rois`` -> ``masks``).

Steps (each in its own module):

1. read the head (a roiseg checkpoint, or a head ONNX exported by :func:`graph_tools.export.export_head`);
2. load the detector, check it against the head (tensor present, channels, input size, stride;
   the checkpoint's extractor sha256: warning, or error with ``strict``);
3. trim the detector at the feature tensor (:mod:`graph_tools.trim`);
4. export the head (checkpoints) and bring both to one opset (:mod:`graph_tools.opset`);
5. splice (:mod:`graph_tools.splice`), write metadata (:mod:`graph_tools.metadata`), full ``onnx.checker``;
6. simplify with onnxsim, verified on realistic inputs (:mod:`graph_tools.simplify`);
7. save atomically (:mod:`graph_tools.io`). Nothing is written before every check passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx

from graph_tools.export import export_head, head_config_of, head_extractor_of
from graph_tools.inspect import Dim, describe_io, file_sha256, load_model
from graph_tools.io import needs_external_data, save_model
from graph_tools.metadata import FusedMetadata, detector_props, write_metadata
from graph_tools.opset import convert_opset, default_opset, max_supported_opset
from graph_tools.simplify import simplify_verified
from graph_tools.splice import splice
from graph_tools.trim import trim_at_tensor
from roiseg.conventions import (
    DEFAULT_FEATURE_TENSOR, DEFAULT_FUSED_MODEL, DEFAULT_HEAD_OPSET, DEFAULT_IMAGE_INPUT, DEFAULT_PREPROCESSING,
    FUSED_ROIS_INPUT, MIN_HEAD_OPSET, Preprocessing, preprocess, read_image,
)
from roiseg.errors import InputError
from roiseg.modeling import HeadConfig, RoiMaskHead
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

HEAD_ONNX_SUFFIX = ".onnx"


# --------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------
@dataclass
class HeadSource:
    """A head to fuse: from a checkpoint (``head`` set) or an exported head ONNX (``onnx`` set).

    ``extractor`` is the extractor info recorded with it (``ExtractorInfo.to_dict()``), if any.
    """

    path: Path
    sha256: str
    cfg: HeadConfig
    extractor: dict | None
    head: RoiMaskHead | None = None
    onnx: onnx.ModelProto | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        if self.extractor and self.extractor.get("preprocessing"):
            return Preprocessing.from_json(self.extractor["preprocessing"])
        return DEFAULT_PREPROCESSING

    def to_onnx(self, opset: int) -> onnx.ModelProto:
        """The head as ONNX at ``opset`` (exported from the checkpoint, or the head ONNX converted)."""
        if self.head is not None:
            return export_head(self.head, None, opset=opset, extractor=self.extractor)
        assert self.onnx is not None
        return convert_opset(self.onnx, opset, f"head {self.path}")


def load_head_source(path: str | Path) -> HeadSource:
    """Read ``--head``: a ``.onnx`` file is an exported head, anything else a roiseg checkpoint."""
    from roiseg.training.checkpoint import load_head

    p = Path(path)
    if p.suffix.lower() == HEAD_ONNX_SUFFIX:
        model = load_model(p)
        cfg = head_config_of(model, p)
        return HeadSource(p, file_sha256(p), cfg, head_extractor_of(model), onnx=model)
    head, state = load_head(p)
    return HeadSource(p, file_sha256(p), head.cfg, state.get("extractor"), head=head)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def check_opset_request(opset: int | None) -> None:
    """InputError for an ``--opset`` below 16 (RoiAlign half_pixel) or above what onnx/onnxruntime support."""
    if opset is None:
        return
    if opset < MIN_HEAD_OPSET:
        raise InputError(f"--opset {opset} is too low: RoiAlign with half_pixel needs opset >= {MIN_HEAD_OPSET}")
    if opset > max_supported_opset():
        raise InputError(f"--opset {opset} is too high: the installed onnx/onnxruntime support up to {max_supported_opset()}")


def check_extractor_hash(source: HeadSource, yolo: Path, yolo_sha: str, strict: bool) -> list[str]:
    """Compare the head's recorded extractor sha256 with ``yolo``'s; warning list, or InputError when ``strict``."""
    recorded = (source.extractor or {}).get("sha256")
    if not recorded:
        note = f"{source.path} records no extractor sha256; cannot verify it was trained on {yolo.name}"
        if strict:
            raise InputError(f"--strict: {note}")
        return [note]
    if recorded == yolo_sha:
        return []
    trained_on = Path((source.extractor or {}).get("path", "?")).name
    note = (f"{source.path} was trained on features of {trained_on} (sha256 {recorded[:12]}…) "
            f"but --yolo {yolo} has sha256 {yolo_sha[:12]}…")
    if strict:
        raise InputError(f"--strict: {note}")
    return [note]


def check_head_matches(cfg: HeadConfig, info, yolo: Path) -> None:
    """InputError when the head was built for other channels, input size or stride than ``info`` describes."""
    if cfg.in_channels != info.channels:
        raise InputError(
            f"head expects {cfg.in_channels} feature channels but tensor {info.tensor!r} of {yolo} has {info.channels}"
        )
    if tuple(cfg.input_hw) != tuple(info.input_hw):
        raise InputError(f"head was built for input {list(cfg.input_hw)} but {yolo} takes {list(info.input_hw)}")
    if cfg.stride != info.stride:
        raise InputError(f"head expects stride {cfg.stride} but tensor {info.tensor!r} of {yolo} has stride {info.stride}")


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------
@dataclass
class FusedBuild:
    """An unsimplified fused model and what it was built from (kept in memory, nothing written)."""

    model: onnx.ModelProto
    detector: onnx.ModelProto
    """The trimmed detector at the fused model's opset (the exact detector path inside ``model``)."""
    meta: FusedMetadata
    opset: int
    head: HeadSource
    yolo: Path
    warnings: list[str] = field(default_factory=list)


def build_fused(
    yolo: str | Path, head: str | Path | HeadSource, cut: str | None = None, opset: int | None = None,
    strict: bool = False,
) -> FusedBuild:
    """Trim, export, reconcile and splice (steps 1-5 of the module docstring); returns the unsimplified model."""
    from roiseg.features.extractor import describe_extractor

    check_opset_request(opset)
    source = head if isinstance(head, HeadSource) else load_head_source(head)
    yolo = Path(yolo)
    tensor = cut or (source.extractor or {}).get("tensor") or DEFAULT_FEATURE_TENSOR
    info = describe_extractor(yolo, tensor, source.preprocessing)
    warnings = check_extractor_hash(source, yolo, info.sha256, strict)
    for note in warnings:
        LOG.warning(note)
    check_head_matches(source.cfg, info, yolo)

    detector = load_model(yolo)
    LOG.info("trimming %s at %s", yolo.name, tensor)
    trimmed = trim_at_tensor(detector, tensor)
    det_opset = default_opset(trimmed)
    head_opset = default_opset(source.onnx) if source.onnx is not None else DEFAULT_HEAD_OPSET
    target = opset if opset is not None else max(det_opset, head_opset, MIN_HEAD_OPSET)
    trimmed = convert_opset(trimmed, target, f"detector {yolo}")
    LOG.info("exporting the head (%s variant) at opset %d", source.cfg.variant, target)
    head_model = source.to_onnx(target)

    fused = splice(trimmed, head_model, tensor)
    meta = FusedMetadata(
        extractor_file=yolo.name, extractor_sha256=info.sha256, feature_tensor=tensor,
        input_hw=info.input_hw, stride=info.stride, preprocessing=source.preprocessing,
        head_config=source.cfg, head_sha256=source.sha256, extra=detector_props(detector),
    )
    write_metadata(fused, meta)
    full_check(fused)
    return FusedBuild(fused, trimmed, meta, target, source, yolo, warnings)


def full_check(model: onnx.ModelProto, path: str | Path | None = None) -> None:
    """``onnx.checker`` with ``full_check`` (shape inference); by path for models over 2 GB."""
    if needs_external_data(model):
        if path is not None:
            onnx.checker.check_model(str(path), full_check=True)
        return
    onnx.checker.check_model(model, full_check=True)


# --------------------------------------------------------------------------------------------
# Check inputs for the simplifier
# --------------------------------------------------------------------------------------------
def check_feeds(
    meta: FusedMetadata, images: Sequence[str | Path] | None = None, many: int = 8,
) -> list[dict[str, np.ndarray]]:
    """Feeds for verifying the simplified model: each image with 1 ROI and with ``many`` ROIs.

    ``images`` are image files (preprocessed like the model expects); without them one smooth
    synthetic image stands in. ROIs are plausible person boxes and the border/thin/whole-image edge
    cases of :mod:`graph_tools.parity` (never uniform random boxes, which are degenerate).
    """
    from graph_tools.parity import plausible_rois, probe_rois, smooth_image

    if images:
        arrays = [preprocess(read_image(p), meta.input_hw, meta.preprocessing) for p in images]
    else:
        arrays = [smooth_image(meta.input_hw, seed=0)]
    feeds = []
    for i, img in enumerate(arrays):
        feeds.append({DEFAULT_IMAGE_INPUT: img, FUSED_ROIS_INPUT: plausible_rois(1, seed=i)})
        feeds.append({DEFAULT_IMAGE_INPUT: img, FUSED_ROIS_INPUT: probe_rois(plausible_rois(2, seed=i), meta.input_hw, many)})
    return feeds


# --------------------------------------------------------------------------------------------
# fuse
# --------------------------------------------------------------------------------------------
@dataclass
class FuseReport:
    """What :func:`fuse` wrote (the CLI prints :meth:`summary`)."""

    out: Path
    inputs: list[tuple[str, list[Dim]]]
    outputs: list[tuple[str, list[Dim]]]
    opset: int
    ir_version: int
    nodes_before: int
    nodes_after: int
    simplified: bool
    simplify_note: str
    file_bytes: int
    meta: FusedMetadata
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "out": str(self.out), "inputs": self.inputs, "outputs": self.outputs, "opset": self.opset,
            "ir_version": self.ir_version, "nodes_before_simplify": self.nodes_before,
            "nodes_after_simplify": self.nodes_after, "simplified": self.simplified,
            "simplify_note": self.simplify_note, "file_bytes": self.file_bytes,
            "metadata": self.meta.summary(), "warnings": self.warnings,
        }

    def summary(self) -> str:
        """Multi-line human summary: I/O with shapes, opset/IR, node counts, size, path."""
        io_lines = [f"  input  {n:<8} {shape}" for n, shape in self.inputs]
        io_lines += [f"  output {n:<8} {shape}" for n, shape in self.outputs]
        simp = (f"{self.nodes_before} -> {self.nodes_after} nodes (onnxsim)" if self.simplified
                else f"{self.nodes_before} nodes (not simplified: {self.simplify_note})")
        lines = [
            f"fused model: {self.out}",
            *io_lines,
            f"  opset {self.opset}, IR version {self.ir_version}",
            f"  nodes: {simp}",
            f"  feature tensor {self.meta.feature_tensor} (stride {self.meta.stride}), "
            f"input {self.meta.input_hw[0]}x{self.meta.input_hw[1]}, head variant {self.meta.head_config.variant}",
            f"  size: {self.file_bytes / 1e6:.1f} MB",
        ]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def fuse(
    yolo: str | Path,
    head: str | Path,
    cut: str | None = None,
    out: str | Path = DEFAULT_FUSED_MODEL,
    opset: int | None = None,
    simplify: bool = True,
    strict: bool = False,
    check_images: Sequence[str | Path] | None = None,
) -> FuseReport:
    """Build the fused model from ``yolo`` (full detector or featext) and ``head`` and write it to ``out``.

    ``cut`` defaults to the tensor recorded with the head. ``opset`` defaults to the higher of the
    detector's and the head's (>= 16). ``check_images`` are image files for verifying the simplified
    model (a synthetic image otherwise). Raises :class:`InputError` for bad input; writes nothing then.
    """
    out = Path(out)
    build = build_fused(yolo, head, cut=cut, opset=opset, strict=strict)
    model = build.model
    nodes_before = len(model.graph.node)
    if simplify:
        result = simplify_verified(model, check_feeds(build.meta, check_images))
        model, simplified, note = result.model, result.simplified, result.note
        if not simplified:
            build.warnings.append(f"kept the unsimplified model: {note}")
    else:
        simplified, note = False, "--no-simplify"
    build.meta.simplified = simplified
    write_metadata(model, build.meta)
    save_model(model, out)
    if needs_external_data(model):
        full_check(model, out)
    io = describe_io(model)
    size = out.stat().st_size + sum(p.stat().st_size for p in out.parent.glob(f"{out.name}.data"))
    LOG.info("wrote %s (%.1f MB)", out, size / 1e6)
    return FuseReport(
        out=out, inputs=io["inputs"], outputs=io["outputs"], opset=build.opset, ir_version=int(model.ir_version),
        nodes_before=nodes_before, nodes_after=len(model.graph.node), simplified=simplified, simplify_note=note,
        file_bytes=size, meta=build.meta, warnings=build.warnings,
    )

