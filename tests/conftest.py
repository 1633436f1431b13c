"""Shared fixtures: paths to ../shared, small stand-in detectors, and the checkpoints and fused models
many modules use, each built once per session (a YOLOX-nano fuse costs seconds on 2 CPU cores)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROISEG_SHARED", REPO.parent / "shared"))

if os.environ.get("PYTEST_XDIST_WORKER"):  # pyproject's addopts run the suite in 2 processes (pytest-xdist)
    # the workers share the cores: torch/OpenMP threads split between them (read when torch is imported, later)
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _workers)))

MODEL_EXPORT = os.environ.get("ROISEG_MODEL_EXPORT")
"""CI: where the session's ROI and instance model are copied (``.ci/light_install.sh`` runs them without torch)."""

# Small stand-in shapes used across tests: fast on 2 CPU cores, same names as the reference.
SMALL_CHANNELS = 32
SMALL_INPUT_HW = (128, 128)


@pytest.fixture(autouse=True)
def _keep_the_default_malloc_policy(monkeypatch):
    """``parity-check`` fixes glibc's mmap threshold for its whole process (roiseg.utils.memory), for
    good; commands run in-process here must not change it for the tests after them (their time).
    tests/test_memory.py checks the policy itself in fresh processes."""
    import roiseg.utils.memory as memory

    monkeypatch.setattr(memory, "map_large_blocks", lambda *a, **k: False)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"../shared is required by the tests (looked in {SHARED})"
    return SHARED


@pytest.fixture(scope="session")
def coco_tiny(shared_dir: Path) -> Path:
    return shared_dir / "coco-tiny"


@pytest.fixture(scope="session")
def yolox_nano(shared_dir: Path) -> Path:
    return shared_dir / "extractors" / "yolox_nano.onnx"


@pytest.fixture(scope="session")
def stand_in_full(tmp_path_factory) -> Path:
    """Full stand-in detector: feature tensor internal, output ``output0``."""
    from roiseg.synthetic.detector import build_stand_in_detector

    out = tmp_path_factory.mktemp("detector") / "stand_in_full.onnx"
    return build_stand_in_detector(out, channels=SMALL_CHANNELS, input_hw=SMALL_INPUT_HW, mode="full")


@pytest.fixture(scope="session")
def stand_in_featext(tmp_path_factory) -> Path:
    """Featext-style stand-in: outputs ``output0`` and ``/model.34/Concat_output_0``."""
    from roiseg.synthetic.detector import build_stand_in_detector

    out = tmp_path_factory.mktemp("detector") / "stand_in_featext.onnx"
    return build_stand_in_detector(out, channels=SMALL_CHANNELS, input_hw=SMALL_INPUT_HW, mode="featext")


@pytest.fixture(scope="session")
def yolox_trained_head(tmp_path_factory, coco_tiny, yolox_nano) -> Path:
    """``best.pth`` of the default head trained with the defaults for 2 epochs on coco-tiny train
    (37 images) with YOLOX-nano features and its own preprocessing (a trained head, not random
    weights), validated on coco-tiny val each epoch (``metrics.jsonl`` beside it); shared by every module."""
    from roiseg.data.prepare import prepare_coco
    from roiseg.training.config import load_config
    from roiseg.training.engine import train

    root = tmp_path_factory.mktemp("yolox_trained")
    for split in ("train2017", "val2017"):
        prepare_coco(coco_tiny / f"annotations/instances_{split}.json", root / "annotations")
    over = {"data.train_ann": str(root / "annotations/instances_train2017_person_only_no_crowd.json"),
            "data.val_ann": str(root / "annotations/instances_val2017_person_only_no_crowd.json"),
            "data.train_images": str(coco_tiny / "images/train2017"), "data.val_images": str(coco_tiny / "images/val2017"),
            "data.analyze_json": str(root / "none.json"),
            "data.num_workers": 0, "features.extractor": str(yolox_nano), "features.feature_tensor": "input.663",
            "features.cache": str(root / "cache"), "features.color": "bgr", "features.scale": 1.0,
            "train.out": str(root / "run"), "train.device": "cpu", "train.epochs": 2, "train.picture": False}
    train(load_config(None, over))
    return root / "run" / "best.pth"


# --------------------------------------------------------------------------------------------
# Checkpoints and fused models shared by every module (session scope)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared_models")


@pytest.fixture(scope="session")
def stand_in_checkpoint(model_dir, stand_in_full) -> Path:
    """Random ``detail`` head (seed 0) for the full stand-in detector."""
    from helpers_graph import make_checkpoint

    return make_checkpoint(model_dir / "stand_in.pth", stand_in_full)


@pytest.fixture(scope="session")
def featext_checkpoint(model_dir, stand_in_featext) -> Path:
    """Random ``detail`` head (seed 0) for the featext stand-in detector."""
    from helpers_graph import make_checkpoint

    return make_checkpoint(model_dir / "featext.pth", stand_in_featext)


@pytest.fixture(scope="session")
def yolox_checkpoint(model_dir, yolox_nano) -> Path:
    """Random ``detail`` head on YOLOX-nano's ``input.663``, recorded with YOLOX's own preprocessing (BGR 0..255)."""
    from helpers_graph import YOLOX_PRE, YOLOX_TENSOR, make_checkpoint

    return make_checkpoint(model_dir / "yolox.pth", yolox_nano, YOLOX_TENSOR, variant="detail", preprocessing=YOLOX_PRE)


@pytest.fixture(scope="session")
def yolox_baseline_checkpoint(model_dir, yolox_nano) -> Path:
    """Random ``baseline`` head on YOLOX-nano's ``input.663`` (default preprocessing)."""
    from helpers_graph import YOLOX_TENSOR, make_checkpoint

    return make_checkpoint(model_dir / "yolox_baseline.pth", yolox_nano, YOLOX_TENSOR, variant="baseline")


@pytest.fixture(scope="session")
def roi_model(model_dir, stand_in_featext, featext_checkpoint) -> Path:
    """Unsimplified ROI model: featext stand-in + :func:`featext_checkpoint`."""
    from helpers_graph import fused_once

    return _exported(fused_once(model_dir, stand_in_featext, featext_checkpoint, simplify=False), "roi_model.onnx")


@pytest.fixture(scope="session")
def instance_model(model_dir, yolox_nano, yolox_checkpoint) -> Path:
    """Unsimplified YOLOX-nano instance model (tensor input) with :func:`yolox_checkpoint`."""
    from roiseg.export.instances import fuse_instances

    out = fuse_instances(yolox_nano, yolox_checkpoint, model_dir / "yolox_instances.onnx", simplify=False).out
    return _exported(out, "instance_model.onnx")


def _exported(model: Path, name: str) -> Path:
    """``model``, also copied to ``$ROISEG_MODEL_EXPORT/name`` when that is set."""
    if MODEL_EXPORT:  # both test processes may export it: copied under a name of its own, then renamed
        Path(MODEL_EXPORT).mkdir(parents=True, exist_ok=True)
        part = Path(MODEL_EXPORT) / f".{name}.{os.getpid()}"
        shutil.copyfile(model, part)
        os.replace(part, Path(MODEL_EXPORT) / name)
    return model
