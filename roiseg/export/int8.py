"""Static int8 quantization of a fused model (``roiseg fuse --int8 head|all``), with onnxruntime's tools.

``onnxruntime.quantization.quantize_static`` in the **QDQ** format (QuantizeLinear/DequantizeLinear
pairs around float ops: what TensorRT's ONNX parser takes; no ``ConvInteger`` or
``DynamicQuantizeLinear``), int8 activations and weights, symmetric, **per-channel** weights, ranges
calibrated on real images (``--calibration-images DIR``, the first ``--calibration-count`` files in name
order) with plausible person ROIs: MinMax ranges **averaged over the calibration feeds**
(``CalibMovingAverage``), so that one image with an outlier does not set a tensor's range.

Only ``Conv``, ``ConvTranspose`` and ``Gemm`` are quantized (where the compute is: the pixel decoder,
the refinement, the detector): ``RoiAlign``, ``Resize``, ``Softmax``, every ``MatMul`` (the query
MLPs and attention on three queries, the dot products that make the logits, the paste) stay float —
quantizing the query MatMuls bought no measurable time. Depthwise convolutions (``group`` > 1) stay float
too: int8 on one-channel filters cost YOLOX-nano's ``all`` model 0.09 per-ROI target IoU against the
float model (0.85 -> 0.94 without them; docs/performance.md). The detector's **first convolution** stays
float too (:data:`FLOAT_FIRST_CONVS`): it reads the image (3-12 input channels, little compute) and is the
most sensitive layer — with it and the averaged ranges YOLOX-nano's ``all`` model went from 0.866 to 0.955
per-ROI target IoU against float, YOLO11n's from 0.964 to 0.974 (docs/performance.md). The head's
**neighbour-map projection** stays float as well (:func:`map_reading_convs`): its input's range depends on
how many ROIs a feed has (0 with one ROI), so ranges averaged over the feeds would clip it; it is a
one-channel 1x1 conv, no compute to save. So do the convs that read the map beside other channels
(``neighbour_convs``: the local branch's first 3x3 conv, the refinement's first conv): one scale for the
whole input would round the map, in [0, 1), to the step of the widest channel (the RoI-aligned image, 0..255
on YOLOX-nano). On the weakly trained YOLOX-nano head of ``tests/test_int8.py`` (8 val images) the ``head`` model
then agrees with float at 0.954 per-ROI target IoU (0.961 for the head without ``neighbour_convs``).
``head``: the head's nodes only (names under ``conventions.HEAD_PREFIX``);
``all``: the detector's too, unless the detector is already quantized (``ConvInteger``,
``DynamicQuantizeLinear``, ``QuantizeLinear``...): that is said, and only the head is quantized.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

import graph_tools as gt
from roiseg.conventions import HEAD_PREFIX
from roiseg.errors import InputError
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

INT8_SCOPES: tuple[str, ...] = ("head", "all")
QUANTIZED_OPS: frozenset[str] = frozenset({"Conv", "ConvTranspose", "Gemm"})
QUANT_OPS: frozenset[str] = frozenset({"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QLinearConv",
                                        "QLinearMatMul", "QuantizeLinear", "DequantizeLinear"})
"""Ops that show a detector was quantized already."""
DEFAULT_CALIBRATION_COUNT: int = 32
NEIGHBOUR_SCOPE: str = "/neighbours/"
"""Name scope of the neighbour map's projection conv, whose input is the map (``QueryMaskHead.neighbours``)."""
FLOAT_FIRST_CONVS: int = 1
"""The detector's first convolutions (in graph order) that ``all`` keeps in float."""
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")


def calibration_files(folder: str | Path, count: int = DEFAULT_CALIBRATION_COUNT) -> list[Path]:
    """The first ``count`` image files of ``folder`` in name order; InputError naming the folder when it has none."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"--calibration-images {path}: no such folder")
    if count < 1:
        raise InputError(f"--calibration-count must be >= 1, got {count}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
    if not files:
        raise InputError(f"--calibration-images {path}: no image ({', '.join(IMAGE_SUFFIXES)}) in it")
    return files


def quantized_ops(model: onnx.ModelProto) -> Counter:
    """Quantization ops already in the detector part of ``model`` (outside the head)."""
    return Counter(n.op_type for n in model.graph.node if n.op_type in QUANT_OPS and not n.name.startswith(HEAD_PREFIX))


def map_reading_convs(model: onnx.ModelProto) -> set[str]:
    """Names of the head's convs that read the neighbour map as it is: its projection and every conv the map
    reaches through ops that are not convs (with ``neighbour_convs``: the local branch's and the refinement's
    first convs, through the area-mean MatMuls and a Concat). Empty for a head without the map."""
    anchors = [n for n in model.graph.node if n.op_type == "Conv" and NEIGHBOUR_SCOPE in n.name]
    if not anchors:
        return set()
    return {n.name for n in gt.first_nodes_downstream(model, anchors[0].input[0], ("Conv",))}


def nodes_to_quantize(model: onnx.ModelProto, scope: str) -> list[str]:
    """Names of the nodes :mod:`this module <roiseg.export.int8>` quantizes in ``scope`` (module docstring)."""
    weights = {i.name for i in model.graph.initializer}
    names, detector_convs, keep_float = [], 0, map_reading_convs(model)
    for node in model.graph.node:
        in_head = node.name.startswith(HEAD_PREFIX)
        if scope == "head" and not in_head:
            continue
        if node.op_type == "Conv" and not in_head:
            detector_convs += 1
            if detector_convs <= FLOAT_FIRST_CONVS:
                continue
        if in_head and node.name in keep_float:
            continue
        if (node.op_type in QUANTIZED_OPS and gt.node_attributes(node).get("group", 1) == 1
                and any(i in weights for i in node.input)):
            names.append(node.name)
    return names


class CalibrationReader:
    """``CalibrationDataReader``: the calibration feeds one by one."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_options(activations: str = "int8") -> dict[str, Any]:
    """``quantize_static`` keywords of ``fuse --int8`` (module docstring): QDQ, per-channel symmetric int8
    weights, MinMax ranges averaged over the feeds; ``activations`` ``int8`` (symmetric: TensorRT's format,
    what ``fuse`` writes) or ``uint8`` (asymmetric: onnxruntime's x86 CPU fuses only these; bench_int8_formats)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    if activations not in ("int8", "uint8"):
        raise ValueError(f"activations must be int8 or uint8, got {activations!r}")
    signed = activations == "int8"
    return {"quant_format": QuantFormat.QDQ, "per_channel": True, "weight_type": QuantType.QInt8,
            "activation_type": QuantType.QInt8 if signed else QuantType.QUInt8,
            "calibrate_method": CalibrationMethod.MinMax,
            "extra_options": {"ActivationSymmetric": signed, "WeightSymmetric": True, "CalibMovingAverage": True}}


def quantize_int8(model: onnx.ModelProto, scope: str, feeds: Sequence[dict[str, np.ndarray]]) -> tuple[onnx.ModelProto, str]:
    """``model`` with int8 QDQ on the nodes of ``scope``, ranges from ``feeds``; and a note on what was done."""
    from onnxruntime.quantization import quantize_static

    if scope not in INT8_SCOPES:
        raise InputError(f"--int8 must be one of {', '.join(INT8_SCOPES)}, got {scope!r}")
    done = quantized_ops(model)
    if scope == "all" and done:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(done.items()))
        LOG.warning("the detector is quantized already (%s): quantizing the head only", ops)
        scope = "head"
    names = nodes_to_quantize(model, scope)
    if not names:
        raise InputError(f"--int8 {scope}: the model has no Conv/ConvTranspose/Gemm to quantize there")
    with tempfile.TemporaryDirectory(prefix="roiseg_int8_") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        gt.save_model(model, src)
        # calibrate only the op types quantized (default: every QDQ-able op's tensors, ~2.3k on YOLOX-nano):
        # the same model, byte for byte, in 60 % of the time and with fewer ranges held (docs/performance.md, int8)
        chosen = set(names)
        ops = sorted({n.op_type for n in model.graph.node if n.name in chosen})
        quantize_static(str(src), str(dst), CalibrationReader(feeds), nodes_to_quantize=names, op_types_to_quantize=ops,
                        **quantize_options())
        quantized = gt.load_model(dst)
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    note = (f"int8 ({scope}): {len(names)} nodes quantized (QDQ, per-channel, symmetric), ranges averaged over "
            f"{len(feeds)} calibration feeds")
    if done:
        note += f"; the detector was quantized already ({sum(done.values())} quantization ops)"
    return quantized, note
