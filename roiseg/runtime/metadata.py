"""Every ``roiseg.*`` metadata key, defined once: the fused model's and the exported head's.

The fused model's ``metadata_props`` say what a consumer needs to feed it and to trust it.

Every key starts with ``roiseg.`` so it never collides with what a detector exporter stored
(Ultralytics, for instance, writes ``stride`` and ``names``); the detector's own entries are kept
under ``detector.<key>``. Values are strings; structured ones are JSON.

==============================  =============================================================
``roiseg.version``              roiseg version that wrote the model
``roiseg.format``               ``"roiseg-fused-v1"``
``roiseg.extractor_file``       file name of the detector ONNX the model was built from
``roiseg.extractor_sha256``     sha256 of that file
``roiseg.feature_tensor``       tensor the detector was cut at (e.g. ``/model.34/Concat_output_0``)
``roiseg.extra_tensors``        JSON list of the extra taps the head reads (``[]`` for one tap)
``roiseg.input_hw``             JSON ``[H, W]``: size of ``images`` in pixels
``roiseg.stride``               pixels per feature cell
``roiseg.preprocessing``        :meth:`roiseg.conventions.Preprocessing.to_json`
``roiseg.class_names``          JSON list, index = class id (``background``, ``target``, ``non_target``)
``roiseg.roi_format``           ``"xyxy_normalized"``: ``rois`` are x1, y1, x2, y2 in [0, 1]
``roiseg.head_config``          JSON ``roiseg.modeling.HeadConfig.to_dict()`` (read here as a plain dict; the
                                export and verify side make a ``HeadConfig`` of it)
``roiseg.head_sha256``          sha256 of the checkpoint / head ONNX file it was built from
``roiseg.simplified``           ``"true"`` when the simplifier's result was kept
``roiseg.simplifier``           which simplifier's result was kept (``onnxslim`` or ``onnxsim``; empty when none)
``roiseg.image_input``          ``"tensor"`` (``images`` [1, 3, H, W]) or ``"raw"`` (``image`` uint8 [H0, W0, 3] BGR,
                                preprocessed in the graph, masks at H0 x W0)
``roiseg.fp16``                 ``"true"`` when the model computes in float16 where safe (inputs/outputs float32)
``roiseg.int8``                 ``head`` or ``all`` when int8 QDQ quantized (``fuse --int8``); absent otherwise
``roiseg.outputs``              JSON list of the output modes present (``probs``, ``labels``, ``target``,
                                ``roi_logits``; absent = ``["probs"]``), see ``conventions.OUTPUT_MODES``
``roiseg.instances``            instance model only (``roiseg fuse --instances``): JSON ``{"detections":
                                DetectionSpec, "params": InstanceParams, "det_preprocessing": Preprocessing
                                or null}`` (:class:`roiseg.detection.props.InstanceProps`); absent for a ROI model
==============================  =============================================================

An exported head (``roiseg fuse --head head.onnx`` accepts one) carries ``roiseg.head_config``
and, when known, ``roiseg.extractor`` (the checkpoint's extractor info as JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graph_tools import read_file_props, read_props, write_props
from roiseg import __version__
from roiseg.conventions import CLASS_NAMES, DEFAULT_OUTPUTS, OUTPUT_MODES, ImageInput, Preprocessing
from roiseg.detection.props import InstanceProps
from roiseg.errors import InputError, graph_errors

if TYPE_CHECKING:
    import onnx

PREFIX: str = "roiseg."
DETECTOR_META_PREFIX: str = "detector."
FUSED_FORMAT: str = "roiseg-fused-v1"
ROI_FORMAT: str = "xyxy_normalized"

KEY_VERSION = PREFIX + "version"
KEY_FORMAT = PREFIX + "format"
KEY_EXTRACTOR_FILE = PREFIX + "extractor_file"
KEY_EXTRACTOR_SHA256 = PREFIX + "extractor_sha256"
KEY_TENSOR = PREFIX + "feature_tensor"
KEY_EXTRA_TENSORS = PREFIX + "extra_tensors"
KEY_INPUT_HW = PREFIX + "input_hw"
KEY_STRIDE = PREFIX + "stride"
KEY_PREPROCESSING = PREFIX + "preprocessing"
KEY_CLASS_NAMES = PREFIX + "class_names"
KEY_ROI_FORMAT = PREFIX + "roi_format"
KEY_HEAD_CONFIG = PREFIX + "head_config"
KEY_HEAD_SHA256 = PREFIX + "head_sha256"
KEY_SIMPLIFIED = PREFIX + "simplified"
KEY_SIMPLIFIER = PREFIX + "simplifier"
KEY_FP16 = PREFIX + "fp16"
KEY_INT8 = PREFIX + "int8"
KEY_IMAGE_INPUT = PREFIX + "image_input"
KEY_OUTPUTS = PREFIX + "outputs"
"""Fused model and exported head: JSON list of the output modes present."""
KEY_INSTANCES = PREFIX + "instances"
"""Instance model only: how its detections are read and kept (JSON, see the module docstring)."""
KEY_EXTRACTOR = PREFIX + "extractor"
"""Exported head only: the checkpoint's extractor info (``ExtractorInfo.to_dict``) as JSON."""

REQUIRED_KEYS: tuple[str, ...] = (
    KEY_FORMAT, KEY_TENSOR, KEY_INPUT_HW, KEY_STRIDE, KEY_PREPROCESSING, KEY_CLASS_NAMES, KEY_HEAD_CONFIG,
)


@dataclass
class FusedMetadata:
    """The roiseg entries of a fused model's ``metadata_props`` as Python values."""

    extractor_file: str
    extractor_sha256: str
    feature_tensor: str
    input_hw: tuple[int, int]
    stride: int
    preprocessing: Preprocessing
    head_config: dict[str, Any]
    """``HeadConfig.to_dict()`` of the head (a plain dict: running a model needs no ``roiseg.modeling``)."""
    head_sha256: str = ""
    simplified: bool = False
    simplifier: str = ""
    """Which simplifier's result was kept (``onnxslim``, ``onnxsim``; empty when not simplified)."""
    fp16: bool = False
    """True when the model computes in float16 where safe (``roiseg fuse --fp16``)."""
    int8: str = ""
    """``head`` or ``all`` when the model is int8 QDQ quantized (``roiseg fuse --int8``); empty otherwise."""
    image_input: ImageInput = ImageInput.TENSOR
    extra_tensors: tuple[str, ...] = ()
    outputs: tuple[str, ...] = DEFAULT_OUTPUTS
    """Output modes present (keys of ``conventions.OUTPUT_MODES``, in that order)."""
    class_names: tuple[str, ...] = CLASS_NAMES
    instances: InstanceProps | None = None
    """An instance model's detections (:data:`KEY_INSTANCES`); ``None`` for a ROI model, which has no such entry."""
    version: str = __version__
    roi_format: str = ROI_FORMAT
    extra: dict[str, str] = field(default_factory=dict)
    """Other entries (e.g. ``detector.*``), kept as they are."""

    def to_props(self) -> dict[str, str]:
        """``{key: string value}`` as written into ``metadata_props``."""
        props = {
            KEY_VERSION: self.version,
            KEY_FORMAT: FUSED_FORMAT,
            KEY_EXTRACTOR_FILE: self.extractor_file,
            KEY_EXTRACTOR_SHA256: self.extractor_sha256,
            KEY_TENSOR: self.feature_tensor,
            KEY_EXTRA_TENSORS: json.dumps(list(self.extra_tensors)),
            KEY_INPUT_HW: json.dumps(list(self.input_hw)),
            KEY_STRIDE: str(int(self.stride)),
            KEY_PREPROCESSING: self.preprocessing.to_json(),
            KEY_CLASS_NAMES: json.dumps(list(self.class_names)),
            KEY_ROI_FORMAT: self.roi_format,
            KEY_HEAD_CONFIG: json.dumps(self.head_config, sort_keys=True),
            KEY_HEAD_SHA256: self.head_sha256,
            KEY_SIMPLIFIED: "true" if self.simplified else "false",
            KEY_SIMPLIFIER: self.simplifier,
            KEY_FP16: "true" if self.fp16 else "false",
            **({KEY_INT8: self.int8} if self.int8 else {}),
            KEY_IMAGE_INPUT: ImageInput(self.image_input).value,
            KEY_OUTPUTS: json.dumps(list(self.outputs)),
            **({KEY_INSTANCES: self.instances.to_json()} if self.instances is not None else {}),
        }
        return {**self.extra, **props}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str | Path = "model") -> "FusedMetadata":
        """Inverse of :meth:`to_props`; InputError naming ``source`` and the key when one is missing or malformed."""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise InputError(f"{source} is not a roiseg fused model: metadata lacks {', '.join(missing)}")
        key = ""
        try:
            key = KEY_INPUT_HW
            input_hw = tuple(int(v) for v in json.loads(props[KEY_INPUT_HW]))
            key = KEY_STRIDE
            stride = int(props[KEY_STRIDE])
            key = KEY_PREPROCESSING
            pre = Preprocessing.from_json(props[KEY_PREPROCESSING])
            key = KEY_HEAD_CONFIG
            head_cfg = json.loads(props[KEY_HEAD_CONFIG])
            if not isinstance(head_cfg, dict):
                raise TypeError(f"expected a JSON object, got {type(head_cfg).__name__}")
            key = KEY_CLASS_NAMES
            names = tuple(json.loads(props[KEY_CLASS_NAMES]))
            key = KEY_EXTRA_TENSORS
            extra_tensors = tuple(str(t) for t in json.loads(props.get(KEY_EXTRA_TENSORS, "[]")))
            key = KEY_OUTPUTS
            outputs = outputs_of(props)
            key = KEY_IMAGE_INPUT
            image_input = ImageInput(props.get(KEY_IMAGE_INPUT, ImageInput.TENSOR.value))
            key = KEY_INSTANCES
            instances = InstanceProps.from_json(props[KEY_INSTANCES]) if KEY_INSTANCES in props else None
        except (ValueError, TypeError, KeyError) as exc:
            raise InputError(f"{source}: malformed metadata {key}: {exc}") from exc
        if len(input_hw) != 2:
            raise InputError(f"{source}: malformed metadata {KEY_INPUT_HW}: {props[KEY_INPUT_HW]}")
        extra = {k: v for k, v in props.items() if not k.startswith(PREFIX)}
        return cls(
            extractor_file=props.get(KEY_EXTRACTOR_FILE, ""), extractor_sha256=props.get(KEY_EXTRACTOR_SHA256, ""),
            feature_tensor=props[KEY_TENSOR], input_hw=(input_hw[0], input_hw[1]), stride=stride,
            preprocessing=pre, head_config=head_cfg, head_sha256=props.get(KEY_HEAD_SHA256, ""),
            simplified=props.get(KEY_SIMPLIFIED, "false") == "true", simplifier=props.get(KEY_SIMPLIFIER, ""),
            fp16=props.get(KEY_FP16, "false") == "true", int8=props.get(KEY_INT8, ""), image_input=image_input,
            class_names=names, extra_tensors=extra_tensors,
            outputs=outputs, instances=instances,
            version=props.get(KEY_VERSION, ""), roi_format=props.get(KEY_ROI_FORMAT, ROI_FORMAT), extra=extra,
        )

    @property
    def is_instance_model(self) -> bool:
        """An instance model (``fuse --instances``): it takes the image only and finds its own boxes."""
        return self.instances is not None

    def summary(self) -> dict[str, Any]:
        """JSON-able dict for reports."""
        return {
            "extractor_file": self.extractor_file, "extractor_sha256": self.extractor_sha256,
            "feature_tensor": self.feature_tensor, "extra_tensors": list(self.extra_tensors),
            "input_hw": list(self.input_hw), "stride": self.stride,
            "preprocessing": json.loads(self.preprocessing.to_json()), "class_names": list(self.class_names),
            "head_config": dict(self.head_config), "simplified": self.simplified, "simplifier": self.simplifier,
            "fp16": self.fp16, "int8": self.int8, "image_input": ImageInput(self.image_input).value, "version": self.version,
            "outputs": list(self.outputs),
            **({"instances": self.instances.summary()} if self.instances is not None else {}),
        }


def outputs_of(props: dict[str, str]) -> tuple[str, ...]:
    """Output modes recorded in ``props`` (``["probs"]`` when absent); ValueError for an unknown mode."""
    modes = tuple(str(m) for m in json.loads(props.get(KEY_OUTPUTS, json.dumps(list(DEFAULT_OUTPUTS)))))
    unknown = [m for m in modes if m not in OUTPUT_MODES]
    if unknown or not modes:
        raise ValueError(f"unknown output modes {unknown or modes}")
    return modes


def detector_props(detector: onnx.ModelProto) -> dict[str, str]:
    """The detector's own metadata entries, renamed ``detector.<key>``."""
    return {DETECTOR_META_PREFIX + k: v for k, v in read_props(detector).items()}


def write_metadata(model: onnx.ModelProto, meta: FusedMetadata) -> None:
    """Write ``meta`` into ``model.metadata_props`` (replacing what was there)."""
    write_props(model, meta.to_props())


def read_metadata(model: onnx.ModelProto | str | Path) -> FusedMetadata:
    """:class:`FusedMetadata` of a fused model: a ``ModelProto``, or a file (its metadata is read without
    loading the graph or the weights, and without importing onnx: :func:`graph_tools.read_file_props`)."""
    if isinstance(model, (str, Path)):
        with graph_errors():
            return FusedMetadata.from_props(read_file_props(model), model)
    return FusedMetadata.from_props(read_props(model), "model")
