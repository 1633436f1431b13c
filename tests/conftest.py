"""Shared fixtures: paths to ../shared, small stand-in detectors, and the checkpoints and fused models
many modules use, each built once per session (a YOLOX-nano fuse costs seconds on 2 CPU cores)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROISEG_SHARED", REPO.parent / "shared"))

if os.environ.get("PYTEST_XDIST_WORKER"):  # pyproject's addopts run the suite in 2 processes (pytest-xdist)
    # the workers share the cores: torch/OpenMP threads split between them (read when torch is imported, later)
    # and so do onnxruntime's and OpenVINO's (graph_tools.session.THREADS_ENV): two workers with a spinning
    # thread per core each cost ~25 % more CPU time
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    _threads = str(max(1, (os.cpu_count() or 1) // _workers))
    os.environ.setdefault("OMP_NUM_THREADS", _threads)
    os.environ.setdefault("GRAPH_TOOLS_ORT_THREADS", _threads)

MODEL_EXPORT = os.environ.get("ROISEG_MODEL_EXPORT")
"""CI: where the session's ROI and instance model are copied (``.ci/light_install.sh`` runs them without torch)."""

# Small stand-in shapes used across tests: fast on 2 CPU cores, same names as the reference.
SMALL_CHANNELS = 32
SMALL_INPUT_HW = (128, 128)


LONGEST_FIRST: tuple[str, ...] = (
    "test_model_matrix.py", "test_instances.py", "test_head_v3.py", "test_fuse_cli.py", "test_query_head.py",
    "test_output_modes.py", "test_parity.py", "test_ddp.py", "test_int8.py", "test_resume.py", "test_raw_input.py",
    "test_demo.py", "test_export.py", "test_engines.py", "test_splice.py", "test_predict.py",
)
"""The longest modules, longest first (their summed durations, docs/performance.md "Test suite"): with
``--dist loadfile`` a free worker takes the next module, so the long ones start first and the short ones
fill the end (longest-processing-time-first). test_int8 comes after test_head_v3, whose trained head it
would otherwise wait for."""


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: the rest keep their order


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
    return built_once(tmp_path_factory, "stand_in_full", lambda d: _stand_in(d / "stand_in_full.onnx", "full"))


@pytest.fixture(scope="session")
def stand_in_featext(tmp_path_factory) -> Path:
    """Featext-style stand-in: outputs ``output0`` and ``/model.34/Concat_output_0``."""
    return built_once(tmp_path_factory, "stand_in_featext", lambda d: _stand_in(d / "stand_in_featext.onnx", "featext"))


def _stand_in(out: Path, mode: str) -> Path:
    from roiseg.synthetic.detector import build_stand_in_detector

    return build_stand_in_detector(out, channels=SMALL_CHANNELS, input_hw=SMALL_INPUT_HW, mode=mode)


def run_root(tmp_path_factory) -> Path:
    """The run's temporary folder, shared by its test processes (pytest-N, above the workers' popen-gwK)."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Path]) -> Path:
    """``build(folder)`` once per test run, whichever test process asks first (helpers_graph.built_once)."""
    import helpers_graph

    return helpers_graph.built_once(run_root(tmp_path_factory), name, build)


@pytest.fixture(scope="session", autouse=True)
def _shared_fuses(tmp_path_factory):
    """helpers_graph.fused_once shares its models between the test processes of this run."""
    import helpers_graph

    helpers_graph.RUN_ROOT = run_root(tmp_path_factory)


@pytest.fixture(scope="session")
def yolox_trained_head(tmp_path_factory, coco_tiny, yolox_nano) -> Path:
    """``best.pth`` of the default head trained with the defaults for 2 epochs on coco-tiny train
    (37 images) with YOLOX-nano features and its own preprocessing (a trained head, not random
    weights), validated on coco-tiny val each epoch (``metrics.jsonl`` beside it); trained once per
    run and shared by every module and test process (:func:`built_once`)."""
    return built_once(tmp_path_factory, "yolox_trained", lambda root: _train_yolox_head(root, coco_tiny, yolox_nano))


def _train_yolox_head(root: Path, coco_tiny: Path, yolox_nano: Path) -> Path:
    from roiseg.data.prepare import prepare_coco
    from roiseg.training.config import load_config
    from roiseg.training.engine import train

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
def stand_in_checkpoint(tmp_path_factory, stand_in_full) -> Path:
    """Random ``detail`` head (seed 0) for the full stand-in detector."""
    from helpers_graph import make_checkpoint

    return built_once(tmp_path_factory, "stand_in_ckpt", lambda d: make_checkpoint(d / "stand_in.pth", stand_in_full))


@pytest.fixture(scope="session")
def featext_checkpoint(tmp_path_factory, stand_in_featext) -> Path:
    """Random ``detail`` head (seed 0) for the featext stand-in detector."""
    from helpers_graph import make_checkpoint

    return built_once(tmp_path_factory, "featext_ckpt", lambda d: make_checkpoint(d / "featext.pth", stand_in_featext))


@pytest.fixture(scope="session")
def yolox_checkpoint(tmp_path_factory, yolox_nano) -> Path:
    """Random ``detail`` head on YOLOX-nano's ``input.663``, recorded with YOLOX's own preprocessing (BGR 0..255)."""
    from helpers_graph import YOLOX_PRE, YOLOX_TENSOR, make_checkpoint

    return built_once(tmp_path_factory, "yolox_ckpt", lambda d: make_checkpoint(
        d / "yolox.pth", yolox_nano, YOLOX_TENSOR, variant="detail", preprocessing=YOLOX_PRE))


@pytest.fixture(scope="session")
def yolox_baseline_checkpoint(tmp_path_factory, yolox_nano) -> Path:
    """Random ``baseline`` head on YOLOX-nano's ``input.663`` (default preprocessing)."""
    from helpers_graph import YOLOX_TENSOR, make_checkpoint

    return built_once(tmp_path_factory, "yolox_baseline_ckpt", lambda d: make_checkpoint(
        d / "yolox_baseline.pth", yolox_nano, YOLOX_TENSOR, variant="baseline"))


@pytest.fixture(scope="session")
def roi_model(tmp_path_factory, stand_in_featext, featext_checkpoint) -> Path:
    """Unsimplified ROI model: featext stand-in + :func:`featext_checkpoint` (fused once per run: fused_once)."""
    from helpers_graph import fused_once

    return _exported(fused_once(tmp_path_factory.mktemp("roi_model"), stand_in_featext, featext_checkpoint,
                                simplify=False), "roi_model.onnx")


@pytest.fixture(scope="session")
def instance_model(tmp_path_factory, yolox_nano, yolox_checkpoint) -> Path:
    """Unsimplified YOLOX-nano instance model (tensor input) with :func:`yolox_checkpoint`."""
    from roiseg.export.instances import fuse_instances

    model = built_once(tmp_path_factory, "instance_model", lambda d: fuse_instances(
        yolox_nano, yolox_checkpoint, d / "yolox_instances.onnx", simplify=False).out)
    return _exported(model, "instance_model.onnx")


def _exported(model: Path, name: str) -> Path:
    """``model``, also copied to ``$ROISEG_MODEL_EXPORT/name`` when that is set."""
    if MODEL_EXPORT:  # both test processes may export it: copied under a name of its own, then renamed
        Path(MODEL_EXPORT).mkdir(parents=True, exist_ok=True)
        part = Path(MODEL_EXPORT) / f".{name}.{os.getpid()}"
        shutil.copyfile(model, part)
        os.replace(part, Path(MODEL_EXPORT) / name)
    return model

