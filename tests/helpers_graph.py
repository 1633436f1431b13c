"""Builders shared by the graph tests: a checkpoint for a detector without running the training loop."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
from pathlib import Path
from typing import Callable

import torch

from roiseg.conventions import Preprocessing
from roiseg.features.extractor import describe_extractor
from roiseg.modeling import HeadConfig, build_head
from roiseg.training.checkpoint import save_checkpoint

YOLOX_TENSOR = "input.663"
"""Stride-8 [1, 64, 52, 52] feature map of ../shared/extractors/yolox_nano.onnx."""
YOLOX_PRE = Preprocessing(color="bgr", scale=1.0)
"""YOLOX's own input: BGR, 0..255 (its export has no normalisation)."""


def make_checkpoint(
    path: str | Path,
    detector: str | Path,
    tensor: str = "/model.34/Concat_output_0",
    variant: str = "detail",
    hidden: int = 32,
    num_convs: int = 2,
    seed: int = 0,
    logit_scale: float = 4.0,
    preprocessing=None,
    **cfg_fields,
) -> Path:
    """A roiseg checkpoint whose head fits ``detector`` at ``tensor``, with random weights from ``seed``.

    The classifier is scaled by ``logit_scale`` so the three classes are well separated in places
    (like a trained head) instead of all near 1/3. ``preprocessing``: recorded with the extractor
    (``conventions.Preprocessing``; the default one when ``None``). ``cfg_fields``: other ``HeadConfig`` fields.
    """
    info = describe_extractor(detector, tensor, *([preprocessing] if preprocessing is not None else []))
    cfg = HeadConfig(in_channels=info.channels, stride=info.stride, input_hw=info.input_hw, variant=variant,
                     hidden=hidden, num_convs=num_convs, detail_channels=16, **cfg_fields)
    torch.manual_seed(seed)
    head = build_head(cfg)
    with torch.no_grad():
        head.classifier.weight.mul_(logit_scale)
        for m in head.modules():  # non-trivial GroupNorm affine, as after training
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    state = {
        "epoch": 1, "head_config": cfg.to_dict(), "model": head.state_dict(), "extractor": info.to_dict(),
        "metrics": {}, "config": {},
    }
    return save_checkpoint(path, state)


RUN_ROOT: Path | None = None
"""The test run's temporary folder, shared by its processes (pytest-xdist workers); set by conftest.py."""


def built_once(root: Path, name: str, build: Callable[[Path], Path]) -> Path:
    """``build(folder)`` once per test run, in whichever test process asks first (``root``: the run's
    folder); the other processes wait for it and get the same file."""
    folder = root / f"built-{name}"
    done = folder / ".built"
    with open(root / f"built-{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.is_file():
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir()
                done.write_text(str(build(folder).relative_to(folder)))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return folder / done.read_text()


_FUSED: dict[tuple, Path] = {}


def fused_once(root: Path, detector: Path, checkpoint: Path, simplify: bool = True, **kwargs) -> Path:
    """``roiseg.export.fuse.fuse`` (into ``root`` the first time), memoised per detector, checkpoint and
    options for the whole test run: modules, and test processes, that share a checkpoint share the model
    (:func:`built_once` under :data:`RUN_ROOT`; a per-test checkpoint path is a key of its own)."""
    from roiseg.export.fuse import fuse

    key = (str(detector), str(checkpoint), simplify, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
    if key in _FUSED and _FUSED[key].is_file():
        return _FUSED[key]
    if RUN_ROOT is None:
        _FUSED[key] = fuse(detector, checkpoint, out=Path(root) / f"fused_{len(_FUSED)}.onnx", simplify=simplify,
                           **kwargs).out
    else:
        name = "fused-" + hashlib.sha1(repr(key).encode()).hexdigest()[:16]
        _FUSED[key] = built_once(RUN_ROOT, name, lambda folder: fuse(detector, checkpoint, out=folder / "fused.onnx",
                                                                     simplify=simplify, **kwargs).out)
    return _FUSED[key]


def ort_session(model):
    """onnxruntime CPU session on a path or a ModelProto."""
    import onnxruntime as ort

    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"])


def feature_output(detector: Path, tensor: str, image):
    """``tensor`` of the unmodified ``detector`` graph, exposed by appending it to the graph outputs.

    Independent of graph_tools.trim: the graph is only given one more output.
    """
    import onnx

    model = onnx.load(str(detector))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    sess = ort_session(model)
    return sess.run([tensor], {sess.get_inputs()[0].name: image})[0]


def boxes(n: int, seed: int = 0):
    """[n, 4] float32 normalised xyxy boxes with width/height in [0.05, 0.6] (never degenerate)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    wh = rng.uniform(0.05, 0.6, (n, 2))
    x1y1 = rng.uniform(0, 1, (n, 2)) * (1 - wh)
    return np.concatenate([x1y1, x1y1 + wh], 1).astype(np.float32)


def without_head_hash(fused, out):
    """A copy of a fused model whose metadata no longer records the head's sha256 (so parity-check cannot
    tell the head apart by its hash and must find a wrong head by the numbers)."""
    import graph_tools as gt
    from roiseg.runtime.metadata import KEY_HEAD_SHA256

    model = gt.load_model(fused)
    gt.set_prop(model, KEY_HEAD_SHA256, "")
    return gt.save_model(model, out)


def image_folder(root, coco_tiny, names):
    """A folder under ``root`` holding copies of the coco-tiny val images ``names``."""
    import shutil

    for name in names:
        shutil.copy(coco_tiny / "images/val2017" / name, root / name)
    return root
