"""Atomic writes: a writer killed with ``kill -9`` leaves a hidden temp file; the next write beside it
removes it (dead pid or old age), says so in the log, and never touches a live writer's file."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graph_tools import atomic_path, clean_stale_temps
from graph_tools.io import STALE_TEMP_AGE_S
from roiseg.cli import main
from roiseg.utils.atomic import write_json

_KILLED_WRITER = """
import sys, time
from graph_tools import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"x" * 100000)
    print(tmp, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def graph_log():
    """Messages of the ``graph_tools`` logger during the test (whatever the CLI set up before)."""
    records: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("graph_tools")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _killed_writer(final: Path) -> Path:
    """Run a writer that is ``kill -9``-ed inside :func:`atomic_path`; its temp file is left behind."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(final)], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert tmp.is_file() and tmp.name.startswith(f".{final.name}.pid{proc.pid}.") and not final.exists()
    return tmp


def test_clean_stale_temps_rule(tmp_path, graph_log):
    final = tmp_path / "model.onnx"
    dead = tmp_path / f".model.onnx.pid{_dead_pid()}.abcd1234.tmp"
    live = tmp_path / f".model.onnx.pid{os.getpid()}.abcd1234.tmp"
    old_pidless = tmp_path / ".model.onnx.zz_99xyz.tmp"
    fresh_pidless = tmp_path / ".model.onnx.yy_88xyz.tmp"
    other_file = tmp_path / f".model.onnx.data.pid{_dead_pid()}.abcd1234.tmp"
    not_ours = tmp_path / ".model.onnx.tmp"
    for p in (dead, live, old_pidless, fresh_pidless, other_file, not_ours):
        p.write_bytes(b"partial")
    old = time.time() - STALE_TEMP_AGE_S - 60
    os.utime(old_pidless, (old, old))
    removed = clean_stale_temps(final)
    assert sorted(removed) == sorted([dead, old_pidless])
    assert not dead.exists() and not old_pidless.exists()
    assert live.exists() and fresh_pidless.exists() and other_file.exists() and not_ours.exists()
    text = "\n".join(graph_log)
    assert str(dead) in text and "not running" in text and "untouched for" in text


def test_atomic_path_names_temps_with_the_pid_and_refuses_a_folder(tmp_path):
    final = tmp_path / "a.json"
    with atomic_path(final) as tmp:
        assert tmp.name.startswith(f".a.json.pid{os.getpid()}.") and tmp.name.endswith(".tmp")
        tmp.write_text("{}")
    assert final.read_text() == "{}" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    from graph_tools import GraphError
    with pytest.raises(GraphError, match="is a folder"):
        with atomic_path(tmp_path):
            pass


def test_roiseg_write_after_a_killed_writer_cleans_up(tmp_path, graph_log):
    final = tmp_path / "report.json"
    left = _killed_writer(final)
    write_json(final, {"ok": 1})
    assert not left.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert any(str(left) in m and "removed stale temporary file" in m for m in graph_log)


def test_fuse_after_kill_9_removes_the_left_temp_file(tmp_path, stand_in_featext, capsys):
    from helpers_graph import make_checkpoint

    out = tmp_path / "models" / "fused.onnx"
    out.parent.mkdir()
    left = _killed_writer(out)
    head = make_checkpoint(tmp_path / "head.pth", stand_in_featext)
    code = main(["fuse", "--yolo", str(stand_in_featext), "--head", str(head), "--out", str(out), "--no-simplify"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert "removed stale temporary file" in err and left.name in err and "not running" in err
    assert not left.exists() and sorted(p.name for p in out.parent.iterdir()) == ["fused.onnx"]
