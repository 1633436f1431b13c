"""The head to fuse or check: a roiseg checkpoint (weights, PyTorch path) or an exported head ONNX."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx

from graph_tools import ModelCache, convert_opset, file_sha256, load_model, read_props
from roiseg.conventions import DEFAULT_OUTPUTS, DEFAULT_PREPROCESSING, HEAD_ONNX_SUFFIX, Preprocessing, output_modes
from roiseg.errors import InputError, translate_graph_errors
from roiseg.export.wrapper import export_head
from roiseg.modeling import HeadConfig, MaskHead
from roiseg.runtime.metadata import KEY_EXTRACTOR, KEY_HEAD_CONFIG, outputs_of
from roiseg.training.checkpoint import load_head


EXPORT_CACHE_SIZE = 8
"""Exported heads one process keeps (serialized), keyed by the checkpoint file's sha256 and the export
settings: ``parity-check`` rebuilds the head that ``fuse`` exported, and a process that fuses and then
checks (the library, the benches, the tests) traces each head once."""
_EXPORTS = ModelCache(EXPORT_CACHE_SIZE)


def head_config_of(model: onnx.ModelProto, source: str | Path = "head ONNX") -> HeadConfig:
    """The :class:`HeadConfig` stored in an exported head's metadata (InputError when absent)."""
    meta = read_props(model)
    if KEY_HEAD_CONFIG not in meta:
        raise InputError(
            f"{source} has no {KEY_HEAD_CONFIG} metadata; pass a roiseg checkpoint or a head exported by roiseg"
        )
    try:
        return HeadConfig.from_dict(json.loads(meta[KEY_HEAD_CONFIG]))
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(f"{source}: malformed {KEY_HEAD_CONFIG} metadata: {exc}") from exc


def head_extractor_of(model: onnx.ModelProto) -> dict | None:
    """The extractor info stored in an exported head's metadata, or ``None``."""
    meta = read_props(model)
    return json.loads(meta[KEY_EXTRACTOR]) if KEY_EXTRACTOR in meta else None


@dataclass
class HeadSource:
    """A head from a checkpoint (``head`` set) or an exported head ONNX (``onnx`` set).

    ``extractor`` is the extractor info recorded with it (``ExtractorInfo.to_dict()``), if any. ``head``
    holds the file's weights as loaded: its export is kept per process under the file's ``sha256``
    (:data:`EXPORT_CACHE_SIZE`), so the weights are not to be changed in place.
    """

    path: Path
    sha256: str
    cfg: HeadConfig
    extractor: dict | None
    head: MaskHead | None = None
    onnx: onnx.ModelProto | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing the head was trained with (recorded with its extractor info)."""
        if self.extractor and self.extractor.get("preprocessing"):
            return Preprocessing.from_json(self.extractor["preprocessing"])
        return DEFAULT_PREPROCESSING

    @property
    def feature_tensor(self) -> str | None:
        """The detector tensor the head was trained on, when recorded."""
        rec = self.extractor or {}
        return rec.get("feature_tensor") or rec.get("tensor")

    @property
    def extra_tensors(self) -> list[str]:
        """The extra detector taps the head reads (recorded with it), in input order."""
        if not self.cfg.num_extra_taps:
            return []
        names = list((self.extractor or {}).get("extra_tensors") or [])
        if len(names) != self.cfg.num_extra_taps:
            raise InputError(f"{self.path}: the head reads {self.cfg.num_extra_taps} extra tap(s) but records "
                             f"{len(names)} extra tensor name(s)")
        return names

    @translate_graph_errors
    def to_onnx(self, opset: int, outputs=DEFAULT_OUTPUTS, raw_image: bool = False) -> onnx.ModelProto:
        """The head as ONNX at ``opset`` with the ``outputs`` modes (exported from the checkpoint, or
        the head ONNX converted: it must have been exported with those modes; no raw image input)."""
        modes = output_modes(outputs)
        if self.head is not None:
            return self._exported(opset, modes, raw_image)
        assert self.onnx is not None
        if raw_image:
            raise InputError(f"head {self.path}: a raw image input needs the checkpoint (the head ONNX pastes at "
                             "the detector's input size)")
        try:
            present = outputs_of(read_props(self.onnx))
        except ValueError as exc:
            raise InputError(f"head {self.path}: malformed output modes in its metadata: {exc}") from exc
        if present != modes:
            raise InputError(f"head {self.path} was exported with the outputs {', '.join(present)}, not "
                             f"{', '.join(modes)}; pass the checkpoint to fuse other outputs")
        return convert_opset(self.onnx, opset, f"head {self.path}")

    def _exported(self, opset: int, modes: tuple[str, ...], raw_image: bool) -> onnx.ModelProto:
        """The checkpoint's head exported (:func:`export_head`), once per process for the same file and
        settings (:data:`EXPORT_CACHE_SIZE`); each call returns its own copy."""
        key = (self.sha256, opset, modes, raw_image)
        return _EXPORTS.get_or_build(key, lambda: (export_head(self.head, None, opset=opset, extractor=self.extractor,
                                                              outputs=modes, raw_image=raw_image), None))[0]


@translate_graph_errors
def load_head_source(path: str | Path) -> HeadSource:
    """Read a head file: a ``.onnx`` file is an exported head, anything else a roiseg checkpoint."""
    p = Path(path)
    if p.suffix.lower() == HEAD_ONNX_SUFFIX:
        model = load_model(p)
        return HeadSource(p, file_sha256(p), head_config_of(model, p), head_extractor_of(model), onnx=model)
    head, state = load_head(p)
    return HeadSource(p, file_sha256(p), head.cfg, state.get("extractor"), head=head)
