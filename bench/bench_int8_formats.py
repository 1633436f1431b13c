"""int8 formats on onnxruntime's x86 CPU provider: why ``fuse --int8`` (TensorRT's format) is not faster here.

From one float32 fused model (``roiseg fuse`` output), quantizes with onnxruntime's ``quantize_static``
(QDQ, per-channel int8 weights, MinMax on the first ``--calibration-count`` images of
``--calibration-images``) in four ways, and times all of them round-robin in one process at 1 and 8
plausible ROIs on one photo (median of ``--reps``), with the argmax agreement with float32 at 8 ROIs:

* ``s8 conv``: int8 symmetric activations, convolutions only: what ``fuse --int8 all`` writes;
* ``s8 conv, int8 allowed``: the same run with the session option ``session.qdqisint8allowed=1``;
* ``u8 conv``: uint8 asymmetric activations, convolutions only;
* ``u8 wide``: uint8 asymmetric, plus Sigmoid, Mul, Add, Concat, MaxPool, Resize and Split.

    uv run python bench/bench_int8_formats.py --model fused_float32.onnx --calibration-images DIR [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

from roiseg.export.int8 import QUANTIZED_OPS, _Reader, calibration_files
from roiseg.export.probes import model_feeds, plausible_rois
from roiseg.runtime.metadata import read_metadata

WIDE = frozenset({"Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Split"})
FORMATS = {"s8 conv": (QuantType.QInt8, True, QUANTIZED_OPS), "u8 conv": (QuantType.QUInt8, False, QUANTIZED_OPS),
           "u8 wide": (QuantType.QUInt8, False, QUANTIZED_OPS | WIDE)}


def _nodes(model: onnx.ModelProto, ops: frozenset[str]) -> list[str]:
    """Nodes of ``ops``; convolutions only with a weight initializer and ``group`` 1 (as ``fuse --int8``)."""
    weights = {i.name for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        conv = node.op_type in QUANTIZED_OPS
        if node.op_type in ops and (not conv or (group == 1 and any(i in weights for i in node.input))):
            out.append(node.name)
    return out


def quantized(model_path: Path, feeds: list, root: Path) -> dict[str, Path]:
    model = onnx.load(model_path)
    out = {}
    for name, (act, symmetric, ops) in FORMATS.items():
        dst = root / f"{name.replace(' ', '_')}.onnx"
        quantize_static(str(model_path), str(dst), _Reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=act, weight_type=QuantType.QInt8, nodes_to_quantize=_nodes(model, ops),
                        op_types_to_quantize=sorted(ops), calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True})
        out[name] = dst
    return out


def session(path: Path, int8_allowed: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if int8_allowed:
        options.add_session_config_entry("session.qdqisint8allowed", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="float32 fused ROI model (tensor input)")
    ap.add_argument("--calibration-images", type=Path, required=True)
    ap.add_argument("--calibration-count", type=int, default=16)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    meta = read_metadata(args.model)
    names = [i.name for i in onnx.load(args.model, load_external_data=False).graph.input]
    files = calibration_files(args.calibration_images, args.calibration_count)
    feeds = model_feeds(meta.input_hw, meta.preprocessing, meta.image_input, names, files, contract=False)
    with tempfile.TemporaryDirectory(prefix="roiseg_int8_formats_") as tmp:
        paths = quantized(args.model, feeds, Path(tmp))
        sessions = {"float32": session(args.model), "s8 conv": session(paths["s8 conv"]),
                    "s8 conv, int8 allowed": session(paths["s8 conv"], True),
                    "u8 conv": session(paths["u8 conv"]), "u8 wide": session(paths["u8 wide"])}
        image = feeds[0][names[0]]
        inputs = {n: {names[0]: image, "rois": plausible_rois(n, seed=n)} for n in (1, 8)}
        times = {(k, n): [] for k in sessions for n in (1, 8)}
        for rep in range(args.reps + 1):  # rep 0 warms up
            for (k, n), spent in times.items():
                t0 = time.perf_counter()
                sessions[k].run(None, inputs[n])
                if rep:
                    spent.append(time.perf_counter() - t0)
        ref = sessions["float32"].run(None, inputs[8])[0].argmax(1)
        base = [statistics.median(times[("float32", n)]) for n in (1, 8)]
        for k, sess in sessions.items():
            t1, t8 = (statistics.median(times[(k, n)]) for n in (1, 8))
            agree = float(np.mean(sess.run(None, inputs[8])[0].argmax(1) == ref))
            print(f"{k:22s} N=1 {t1 * 1e3:7.1f} ms ({base[0] / t1:.2f}x)  N=8 {t8 * 1e3:7.1f} ms ({base[1] / t8:.2f}x)  "
                  f"argmax vs float32 {agree:.2%}")


if __name__ == "__main__":
    main()
