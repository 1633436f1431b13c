"""Shared fixtures: paths to ../shared and small stand-in detectors built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROISEG_SHARED", REPO.parent / "shared"))

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
