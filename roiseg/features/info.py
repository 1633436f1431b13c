"""What a feature extractor is, read from the detector graph alone: input, taps, shapes, strides.

The detector is cut at the primary feature tensor (``/model.34/Concat_output_0`` for the reference
YOLOv9, [1, 1024, 80, 80] from a [1, 3, 640, 640] input) and any extra taps
(:mod:`roiseg.features.taps`). Input size, channels, feature sizes and strides are read from the
graph, never assumed.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from graph_tools import (
    create_session, dims, elem_type_of, file_sha256, graph_inputs, load_model, opset_version, require_tensor,
    tensor_shapes, trim_at_tensor,
)
from roiseg.conventions import DEFAULT_FEATURE_TENSOR, DEFAULT_PREPROCESSING, Preprocessing
from roiseg.errors import InputError, translate_graph_errors
from roiseg.features.taps import resolve_extra_tensors
from roiseg.utils.files import Stamp, file_stamp
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)


@dataclass(frozen=True)
class ExtractorInfo:
    """What a feature extractor is, as read from its graph; stored in checkpoints and fused models.

    ``input_hw`` is the detector input ``(H, W)`` in pixels, ``feature_hw`` the feature map
    ``(h, w)`` in cells, ``stride = H // h`` (pixels per cell, equal on both axes).
    ``preprocessing`` is :meth:`Preprocessing.to_json`.
    """

    path: str
    sha256: str
    feature_tensor: str
    input_name: str
    input_hw: tuple[int, int]
    channels: int
    feature_hw: tuple[int, int]
    stride: int
    opset: int
    preprocessing: str
    extra_tensors: tuple[str, ...] = ()
    """Extra taps read in the same run, in order (see :mod:`roiseg.features.taps`)."""
    extra_channels: tuple[int, ...] = ()
    extra_feature_hw: tuple[tuple[int, int], ...] = ()
    extra_strides: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        for key in ("input_hw", "feature_hw", "extra_tensors", "extra_channels", "extra_strides"):
            d[key] = list(d[key])
        d["extra_feature_hw"] = [list(hw) for hw in self.extra_feature_hw]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractorInfo":
        """Inverse of :meth:`to_dict`."""
        fields = dict(d)
        if "tensor" in fields:  # checkpoints written before the field was named feature_tensor
            fields["feature_tensor"] = fields.pop("tensor")
        fields["input_hw"] = tuple(int(v) for v in fields["input_hw"])
        fields["feature_hw"] = tuple(int(v) for v in fields["feature_hw"])
        fields["extra_tensors"] = tuple(str(t) for t in fields.get("extra_tensors", ()))
        fields["extra_channels"] = tuple(int(c) for c in fields.get("extra_channels", ()))
        fields["extra_strides"] = tuple(int(c) for c in fields.get("extra_strides", ()))
        fields["extra_feature_hw"] = tuple((int(h), int(w)) for h, w in fields.get("extra_feature_hw", ()))
        return cls(**fields)

    @property
    def tensors(self) -> list[str]:
        """Every tap read: the primary tensor first, then the extra ones."""
        return [self.feature_tensor, *self.extra_tensors]

    @property
    def tap_shapes(self) -> list[tuple[int, int, int]]:
        """``(C, h, w)`` of every tap, primary first."""
        extra = [(c, h, w) for c, (h, w) in zip(self.extra_channels, self.extra_feature_hw)]
        return [(self.channels, *self.feature_hw), *extra]

    @property
    def feature_bytes_fp16(self) -> int:
        """Bytes of one image's features (every tap) stored as fp16: ``sum(C * h * w) * 2``."""
        return sum(c * h * w * 2 for c, h, w in self.tap_shapes)


# --------------------------------------------------------------------------------------------
# Reading the graph
# --------------------------------------------------------------------------------------------
def feature_graph(model: onnx.ModelProto, tensors: str | Sequence[str],
                  model_path: str | Path | None = None) -> onnx.ModelProto:
    """``model`` reduced to the part that computes ``tensors``, which become its only outputs (in order).

    Returned unchanged when they already are its outputs. InputError listing the nearest tensors
    (name, shape) when one is not in the graph.
    """
    names = [tensors] if isinstance(tensors, str) else list(tensors)
    for name in names:
        require_tensor(model, name, model_path)
    if [o.name for o in model.graph.output] == names:
        return model
    return trim_at_tensor(model, names, keep_original_outputs=False)


def _image_input(graph: onnx.ModelProto, path: str | Path) -> tuple[onnx.ValueInfoProto, tuple[int, int]]:
    """The one image input of the feature graph and its static ``(H, W)``."""
    inputs = graph_inputs(graph)
    if len(inputs) != 1:
        names = ", ".join(vi.name for vi in inputs)
        raise InputError(f"{path}: the feature tensor depends on {len(inputs)} inputs ({names}); expected one image input")
    vi = inputs[0]
    shape = dims(vi)
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[1] != 3:
        raise InputError(
            f"{path}: input {vi.name!r} has shape {shape}; expected [N, 3, H, W] with static H and W "
            "(the input size is read from the graph)"
        )
    return vi, (int(shape[2]), int(shape[3]))


def _feature_shape(graph: onnx.ModelProto, feature_tensor: str, input_vi: onnx.ValueInfoProto,
                   input_hw: tuple[int, int]) -> tuple[int, int, int]:
    """``(C, h, w)`` of ``tensor`` from shape inference, or from one CPU run when inference cannot tell."""
    dims = tensor_shapes(graph).get(feature_tensor)
    if dims is not None and len(dims) == 4 and all(isinstance(d, int) for d in dims[1:]):
        return int(dims[1]), int(dims[2]), int(dims[3])
    LOG.info("shape of %s not inferable from the graph; probing with one CPU run", feature_tensor)
    session = create_session(graph)
    x = np.zeros((1, 3, *input_hw), dtype=elem_type_of(graph, input_vi.name))
    out = session.run([feature_tensor], {input_vi.name: x})[0]
    if out.ndim != 4:
        raise InputError(f"feature tensor {feature_tensor!r} has shape {list(out.shape)}; expected [N, C, h, w]")
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def _stride(input_hw: tuple[int, int], feature_hw: tuple[int, int], feature_tensor: str) -> int:
    sy, sx = input_hw[0] // feature_hw[0], input_hw[1] // feature_hw[1]
    if sy != sx or sy < 1:
        raise InputError(
            f"feature tensor {feature_tensor!r} of size {feature_hw[0]}x{feature_hw[1]} has different strides "
            f"on the two axes for input {input_hw[0]}x{input_hw[1]} ({sy} vs {sx})"
        )
    return sy


def describe_graph(path: Path, model: onnx.ModelProto, graph: onnx.ModelProto, feature_tensor: str,
                   preprocessing: Preprocessing, extra_tensors: Sequence[str] = ()) -> ExtractorInfo:
    """:class:`ExtractorInfo` of ``graph`` (``model`` cut at the taps); shapes and strides read from it."""
    input_vi, input_hw = _image_input(graph, path)
    channels, h, w = _feature_shape(graph, feature_tensor, input_vi, input_hw)
    extra = [_feature_shape(graph, t, input_vi, input_hw) for t in extra_tensors]
    return ExtractorInfo(
        path=str(path), sha256=file_sha256(path), feature_tensor=feature_tensor, input_name=input_vi.name,
        input_hw=input_hw, channels=channels, feature_hw=(h, w), stride=_stride(input_hw, (h, w), feature_tensor),
        opset=opset_version(model), preprocessing=preprocessing.to_json(), extra_tensors=tuple(extra_tensors),
        extra_channels=tuple(c for c, _, _ in extra), extra_feature_hw=tuple((eh, ew) for _, eh, ew in extra),
        extra_strides=tuple(_stride(input_hw, (eh, ew), t) for t, (_, eh, ew) in zip(extra_tensors, extra)),
    )


@translate_graph_errors
def describe_extractor(
    path: str | Path, feature_tensor: str = DEFAULT_FEATURE_TENSOR, preprocessing: Preprocessing = DEFAULT_PREPROCESSING,
    extra_tensors: str | Sequence[str] = (),
) -> ExtractorInfo:
    """:class:`ExtractorInfo` of ``path`` at ``feature_tensor`` (and the extra taps) without a session.

    ``extra_tensors``: names, or ``"auto"`` (:mod:`roiseg.features.taps`). InputError when the file
    is missing or unreadable, or a tensor is not in the graph.
    """
    path = Path(path)
    extras = extra_tensors if isinstance(extra_tensors, str) else tuple(extra_tensors)
    # no stamp (unreadable): load_model names the problem
    return _describe(str(path), file_stamp(path), feature_tensor, preprocessing, extras)


@functools.lru_cache(maxsize=16)
def _describe(path: str, stamp: Stamp | None, feature_tensor: str, preprocessing: Preprocessing,
              extra_tensors: str | tuple[str, ...]) -> ExtractorInfo:
    """:func:`describe_extractor`, once per process for a file as it is on disk (``stamp``: its modification
    time, size and inode; a rewritten file is read again): fuse, parity and training each describe the
    detector, and reading a large one (trim, shape inference, sha256) takes seconds."""
    model = load_model(path)
    graph, extras = cut_at_taps(model, Path(path), feature_tensor, extra_tensors)
    return describe_graph(Path(path), model, graph, feature_tensor, preprocessing, extras)


def cut_at_taps(model: onnx.ModelProto, path: Path, feature_tensor: str,
                extra_tensors: str | Sequence[str]) -> tuple[onnx.ModelProto, list[str]]:
    """The feature graph at the primary tensor and the extra taps (``"auto"`` resolved), and those taps."""
    require_tensor(model, feature_tensor, path)
    if isinstance(extra_tensors, str) or extra_tensors:
        input_hw = _image_input(feature_graph(model, feature_tensor, path), path)[1]
        extras = resolve_extra_tensors(model, feature_tensor, extra_tensors, input_hw, str(path))
    else:
        extras = []
    return feature_graph(model, [feature_tensor, *extras], path), extras
