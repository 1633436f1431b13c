"""Large blocks on mmap (roiseg.utils.memory): freed arrays go back to the OS instead of staying
resident after glibc has raised its threshold. Each case runs in a fresh process."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

SCRIPT = """
import json, sys
import numpy as np
from roiseg.utils.memory import map_large_blocks

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

took = map_large_blocks() if sys.argv[1] == "mapped" else None
first = np.ones(24 << 20, np.uint8)  # freeing a mapped 24 MB block raises glibc's threshold to 24 MB
del first
base = rss_mb()
blocks = [np.ones(4 << 20, np.uint8) for _ in range(8)]  # 32 MB in 4 MB blocks
held = rss_mb() - base
del blocks
print(json.dumps({"took": took, "held": held, "left": rss_mb() - base}))
"""

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="the policy is glibc's; elsewhere map_large_blocks is a no-op")


def _run(policy: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, policy], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.splitlines()[-1])


@glibc
def test_freed_large_blocks_leave_the_process_only_when_mapped():
    default, mapped = _run("default"), _run("mapped")
    assert default["held"] >= 30 and mapped["held"] >= 30  # both really held the 32 MB
    assert default["left"] >= 24  # glibc keeps them resident by default: what parity-check suffered from
    assert mapped["took"] is True and mapped["left"] < 4


def test_parity_check_maps_large_blocks_before_its_work(monkeypatch, tmp_path):
    """The command sets the policy before building or reading anything."""
    import roiseg.verify.parity as parity
    import roiseg.utils.memory as memory
    from roiseg.cli import main

    order = []
    monkeypatch.setattr(memory, "map_large_blocks", lambda *a, **k: order.append("map") or True)
    monkeypatch.setattr(parity, "run_parity", lambda *a, **k: order.append("parity") or {"passed": True, "stages": {}})
    monkeypatch.setattr(parity, "format_table", lambda report: "")
    code = main(["parity-check", "--yolo", "d.onnx", "--head", "h.pth", "--report", str(tmp_path / "p.json")])
    assert code == 0 and order == ["map", "parity"]
