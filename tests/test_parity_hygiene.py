"""parity-check: the temporary folders of a killed run (kill -9 leaves them) are removed by the next run;
a head other than the fused one is named as such."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import graph_tools as gt
from roiseg.verify.roi import PARITY_TEMP_PREFIX


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_runs_folder_goes_a_live_ones_stays(tmp_path):
    dead = tmp_path / f"{PARITY_TEMP_PREFIX}pid{_dead_pid()}_abc123"
    live = tmp_path / f"{PARITY_TEMP_PREFIX}pid{os.getpid()}_def456"
    other = tmp_path / "someone_elses_pid1_x"
    for folder in (dead, live, other):
        folder.mkdir()
        (folder / "fused.onnx").write_bytes(b"x" * 1000)
    with gt.temp_dir(PARITY_TEMP_PREFIX, tmp_path) as tmp:
        assert tmp.name.startswith(f"{PARITY_TEMP_PREFIX}pid{os.getpid()}_") and tmp.is_dir()
        assert not dead.exists() and live.exists() and other.exists()
    assert not tmp.exists()


def test_an_old_folder_goes_even_when_its_pid_runs(tmp_path):
    old = tmp_path / f"{PARITY_TEMP_PREFIX}pid{os.getpid()}_old000"
    old.mkdir()
    past = time.time() - 2 * 24 * 3600
    os.utime(old, (past, past))
    assert gt.clean_stale_temp_dirs(PARITY_TEMP_PREFIX, tmp_path) == [old] and not old.exists()


def test_a_parity_check_killed_with_sigkill_leaves_nothing_after_the_next(tmp_path):
    code = ("import graph_tools as gt, os, sys\n"
            f"with gt.temp_dir({PARITY_TEMP_PREFIX!r}, sys.argv[1]) as t:\n"
            "    (t / 'fused.onnx').write_bytes(b'x'); print(t, flush=True); os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == -9
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and left[0].name.startswith(PARITY_TEMP_PREFIX)  # kill -9: no cleanup ran
    with gt.temp_dir(PARITY_TEMP_PREFIX, tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []


def test_parity_check_with_another_head_than_the_fused_one_says_so(model_dir, roi_model, stand_in_featext, tmp_path, capsys):
    from helpers_graph import make_checkpoint

    from roiseg.cli import main

    other = make_checkpoint(tmp_path / "other.pth", stand_in_featext, seed=1)
    code = main(["parity-check", "--fused", str(roi_model), "--yolo", str(stand_in_featext), "--head", str(other),
                 "--report", str(tmp_path / "parity.json")])
    err = capsys.readouterr().err
    assert code == 2 and "was not built from the head" in err and "other.pth" in err and "simplify" not in err
    assert not (tmp_path / "parity.json").exists()
