"""int8 formats on onnxruntime's x86 CPU provider: why ``fuse --int8`` (TensorRT's format) is not faster here.

From one float32 fused model (``roiseg fuse`` output), quantizes with onnxruntime's ``quantize_static``
(QDQ, per-channel int8 weights, MinMax ranges averaged over the first ``--calibration-count`` images of
``--calibration-images``) in three ways (four sessions), and times all of them round-robin in one process at 1 and 8
plausible ROIs on one photo (median of ``--reps``), with the argmax agreement with float32 at 8 ROIs:

* ``s8 conv``: what ``fuse --int8 all`` writes (:func:`roiseg.export.int8.quantize_options`: int8 symmetric
  activations; :func:`~roiseg.export.int8.nodes_to_quantize`: the convolutions but the first and the depthwise);
* ``s8 conv, int8 allowed``: the same model run with the session option ``session.qdqisint8allowed=1``;
* ``u8 conv``: the same nodes with uint8 asymmetric activations;
* ``u8 wide``: uint8 asymmetric, plus every Sigmoid, Mul, Add, Concat, MaxPool, Resize and Split.

    uv run python bench/bench_int8_formats.py --model fused_float32.onnx --calibration-images DIR [--reps 7]
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import quantize_static

from roiseg.export.int8 import CalibrationReader, calibration_files, nodes_to_quantize, quantize_options
from roiseg.export.probes import model_feeds, plausible_rois
from roiseg.runtime.metadata import read_metadata

sys.path.insert(0, str(Path(__file__).parent))
from timing import round_robin  # noqa: E402

WIDE = ("Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Split")
"""Element-wise and data-movement ops the ``u8 wide`` format quantizes besides ``fuse --int8 all``'s nodes."""


def quantized(model_path: Path, feeds: Sequence[dict[str, np.ndarray]], root: Path) -> dict[str, Path]:
    """The three formats of the module docstring, written under ``root``."""
    model = onnx.load(model_path)
    convs = nodes_to_quantize(model, "all")
    wide = convs + [n.name for n in model.graph.node if n.op_type in WIDE]
    formats = {"s8 conv": ("int8", convs), "u8 conv": ("uint8", convs), "u8 wide": ("uint8", wide)}
    out = {}
    for name, (activations, nodes) in formats.items():
        dst = root / f"{name.replace(' ', '_')}.onnx"
        options = quantize_options(activations)
        if name == "u8 wide":
            options["op_types_to_quantize"] = sorted({"Conv", "ConvTranspose", "Gemm", *WIDE})
        quantize_static(str(model_path), str(dst), CalibrationReader(feeds), nodes_to_quantize=nodes, **options)
        out[name] = dst
    return out


def session(path: Path, int8_allowed: bool = False) -> ort.InferenceSession:
    """onnxruntime CPU session; ``int8_allowed``: ``session.qdqisint8allowed=1`` (int8-activation kernels on x86)."""
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
        times = round_robin({(k, n): functools.partial(s.run, None, inputs[n]) for k, s in sessions.items()
                             for n in (1, 8)}, args.reps)
        ref = sessions["float32"].run(None, inputs[8])[0].argmax(1)
        base = [times[("float32", n)] for n in (1, 8)]
        for k, sess in sessions.items():
            t1, t8 = (times[(k, n)] for n in (1, 8))
            agree = float(np.mean(sess.run(None, inputs[8])[0].argmax(1) == ref))
            print(f"{k:22s} N=1 {t1 * 1e3:7.1f} ms ({base[0] / t1:.2f}x)  N=8 {t8 * 1e3:7.1f} ms ({base[1] / t8:.2f}x)  "
                  f"argmax vs float32 {agree:.2%}")


if __name__ == "__main__":
    main()
