"""The light install: running a fused model (``roiseg predict``, ``roiseg evaluate`` of an ONNX file) imports
no torch, no ``roiseg.modeling`` and no ``roiseg.training`` (nor onnx: onnxruntime runs the file); the CLI
parser needs none of them either.

Checked in fresh processes with an import hook that refuses those modules (an import anywhere, even one
whose ImportError would be caught, is recorded) — the install without extras has no torch at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "roiseg.modeling", "roiseg.training", "onnx_graphsurgeon", "onnxslim", "onnxsim",
         "matplotlib")
"""What the light install lacks (the ``train`` extra) or what only building and training import."""

GUARD = f"""
import importlib.abc, json, sys
HEAVY = {HEAVY!r}
tried = []

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HEAVY):
            tried.append(name)
            raise ImportError(f"{{name}} is not part of the light install")
        return None

sys.meta_path.insert(0, Refuse())
from roiseg.cli import main
codes = [main(argv) for argv in json.loads(sys.argv[1])]
print(json.dumps({{"codes": codes, "tried": sorted(set(tried)), "onnx": "onnx" in sys.modules,
                   "loaded": sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY))}}))
"""


def _run(commands: list[list[str]]) -> dict:
    out = subprocess.run([sys.executable, "-c", GUARD, json.dumps(commands)], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_parser_and_help_import_no_torch():
    assert _run([]) == {"codes": [], "tried": [], "loaded": [], "onnx": False}  # importing the CLI
    code = "import sys; from roiseg.cli import build_parser; build_parser(); build_parser('predict')\n" \
           "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'matplotlib')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_predict_and_evaluate_run_a_fused_model_without_torch(roi_model, instance_model, coco_tiny, tmp_path):
    """A ROI model and an instance model, each predicted and evaluated (the mode from the metadata)."""
    image = str(coco_tiny / "images/val2017/000000005001.jpg")
    data = ["--annotations", str(coco_tiny / "annotations/instances_val2017.json"),
            "--images", str(coco_tiny / "images/val2017"), "--max-images", "3", "--device", "cpu"]
    got = _run([
        ["predict", "--model", str(roi_model), "--image", image, "--roi", "20,30,200,300", "--out", str(tmp_path / "a.png"),
         "--save-masks", str(tmp_path / "masks"), "--device", "cpu"],
        ["predict", "--model", str(instance_model), "--image", image, "--out", str(tmp_path / "b.png"), "--device", "cpu"],
        ["evaluate", "--model", str(roi_model), *data, "--report", str(tmp_path / "roi.json")],
        ["evaluate", "--model", str(instance_model), *data, "--report", str(tmp_path / "inst.json")],
    ])
    assert got == {"codes": [0, 0, 0, 0], "tried": [], "loaded": [], "onnx": False}  # not even onnx: metadata
    # is read from the file's protobuf directly (graph_tools.read_file_props)
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
    roi, inst = json.loads((tmp_path / "roi.json").read_text()), json.loads((tmp_path / "inst.json").read_text())
    assert roi["num_rois"] > 0 and roi["figures"]["target_iou"]["all"]["mean"] is not None
    assert inst["protocol"] == "instances" and inst["images"]["evaluated"] == 3 and inst["num_detections"] > 0


def test_the_guard_sees_an_import_of_torch(stand_in_full, featext_checkpoint, tmp_path):
    """The check can fail: fusing (a build command) imports torch, and the guard says so."""
    got = _run([["fuse", "--yolo", str(stand_in_full), "--head", str(featext_checkpoint), "--out",
                 str(tmp_path / "f.onnx")]])
    assert got["codes"] != [0] and "torch" in got["tried"]
