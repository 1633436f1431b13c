"""``roiseg fuse`` and ``roiseg parity-check`` from the command line: contract of the written model,
summary, metadata, and one-line errors that write nothing."""

from __future__ import annotations

import hashlib
import json
import logging
import sys

import numpy as np
import onnx
import pytest
from conftest import SMALL_CHANNELS, SMALL_INPUT_HW
from helpers_graph import YOLOX_TENSOR, boxes, fused_once, make_checkpoint, ort_session, without_head_hash

from graph_tools import node_attributes, nodes_of_type, read_props, trim_at_tensor
from roiseg.conventions import HEAD_PREFIX
from roiseg.cli import main
from roiseg.conventions import CLASS_NAMES, DEFAULT_FEATURE_TENSOR, DEFAULT_PREPROCESSING

VAL_JSON = "annotations/instances_val2017.json"
VAL_IMAGES = "images/val2017"


class _CurrentStderr:
    """A stream that writes to whatever ``sys.stderr`` is now (pytest swaps it per test)."""

    def write(self, text: str) -> None:
        sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def log_to_captured_stderr(monkeypatch, capsys):
    """roiseg log lines go to this test's captured stderr (the CLI's handler may be bound to an old one)."""
    handler = logging.StreamHandler(_CurrentStderr())
    handler.setFormatter(logging.Formatter("[%(name)s] %(message)s"))
    monkeypatch.setattr(logging.getLogger("roiseg"), "handlers", [handler])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuse_cli")


@pytest.fixture(scope="module")
def featext_ckpt(featext_checkpoint):
    return featext_checkpoint


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


def test_fuse_featext_model(work, stand_in_featext, featext_ckpt, capsys):
    out = work / "models" / "fused.onnx"
    assert main(["fuse", "--yolo", str(stand_in_featext), "--head", str(featext_ckpt), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    h, w = SMALL_INPUT_HW
    for text in (f"input  images   [1, 3, {h}, {w}]", "input  rois     ['num_rois', 4]",
                 f"output masks    ['num_rois', 3, {h}, {w}]", "opset 17, IR version", "(onnxslim)", "MB", str(out)):
        assert text in printed
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert [(vi.name, _dims(vi)) for vi in model.graph.input] == [("images", [1, 3, h, w]), ("rois", ["num_rois", 4])]
    assert [(vi.name, _dims(vi)) for vi in model.graph.output] == [("masks", ["num_rois", 3, h, w])]
    # One detector path: as many detector convolutions as the trimmed detector has; the detection output is gone.
    trimmed = trim_at_tensor(onnx.load(str(stand_in_featext)), DEFAULT_FEATURE_TENSOR)
    det_convs = sum(n.op_type == "Conv" for n in trimmed.graph.node)
    assert sum(n.op_type == "Conv" and not n.name.startswith(HEAD_PREFIX) for n in model.graph.node) == det_convs
    assert "output0" not in {n for node in model.graph.node for n in node.output}
    assert all(node_attributes(n)["coordinate_transformation_mode"] == "half_pixel" for n in nodes_of_type(model, "RoiAlign"))
    assert len(nodes_of_type(model, "RoiAlign")) == 2  # detail head: features and image
    props = read_props(model)
    assert props["roiseg.extractor_sha256"] == _sha256(stand_in_featext)
    assert props["roiseg.feature_tensor"] == DEFAULT_FEATURE_TENSOR
    assert json.loads(props["roiseg.input_hw"]) == [h, w] and props["roiseg.stride"] == "8"
    assert json.loads(props["roiseg.class_names"]) == list(CLASS_NAMES)
    assert json.loads(props["roiseg.preprocessing"]) == json.loads(DEFAULT_PREPROCESSING.to_json())
    assert json.loads(props["roiseg.head_config"])["in_channels"] == SMALL_CHANNELS
    assert props["roiseg.head_sha256"] == _sha256(featext_ckpt) and props["roiseg.simplified"] == "true"
    sess = ort_session(out)
    image = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    for n in (1, 7, 64):
        masks = sess.run(None, {"images": image, "rois": boxes(n, seed=n)})[0]
        assert masks.shape == (n, 3, h, w)
        np.testing.assert_allclose(masks.sum(1), 1.0, atol=1e-5)


def test_fuse_yolox_unsimplified_runs_64_rois(work, yolox_nano, capsys):
    ckpt = make_checkpoint(work / "yolox.pth", yolox_nano, YOLOX_TENSOR, variant="baseline")
    out = work / "yolox_fused.onnx"
    assert main(["fuse", "--yolo", str(yolox_nano), "--head", str(ckpt), "--out", str(out), "--no-simplify"]) == 0
    assert "not simplified: simplification switched off" in capsys.readouterr().out
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17  # the detector's opset 11 was converted
    assert read_props(model)["roiseg.simplified"] == "false"
    assert read_props(model)["roiseg.feature_tensor"] == YOLOX_TENSOR
    masks = ort_session(out).run(None, {"images": np.full((1, 3, 416, 416), 0.5, np.float32), "rois": boxes(64)})[0]
    assert masks.shape == (64, 3, 416, 416)


def test_fuse_at_a_requested_opset(work, stand_in_full, featext_ckpt):
    out = work / "opset18.onnx"
    assert main(["fuse", "--yolo", str(stand_in_full), "--head", str(featext_ckpt), "--out", str(out),
                 "--opset", "18", "--no-simplify"]) == 0
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 18
    assert ort_session(out).run(None, {"images": np.zeros((1, 3, *SMALL_INPUT_HW), np.float32),
                                       "rois": boxes(2)})[0].shape == (2, 3, *SMALL_INPUT_HW)


def test_head_from_another_detector_file_warns_and_strict_refuses(work, stand_in_full, featext_ckpt, capsys):
    out = work / "mismatch.onnx"
    args = ["fuse", "--yolo", str(stand_in_full), "--head", str(featext_ckpt), "--out", str(out), "--no-simplify"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.out and "sha256" in captured.err and out.is_file()
    strict_out = work / "strict" / "mismatch.onnx"
    args[args.index(str(out))] = str(strict_out)
    assert main(args + ["--strict"]) == 2
    err = _error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "strict" in err[0] and "sha256" in err[0]
    assert not strict_out.exists()


def _bad_inputs(work, stand_in_featext, featext_ckpt, yolox_nano):
    garbage = work / "garbage.onnx"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    text = work / "notes.onnx"
    text.write_text("this is not a model\n")
    bad_ckpt = work / "broken.pth"
    bad_ckpt.write_bytes(b"PK\x03\x04 truncated")
    good = ["--yolo", str(stand_in_featext), "--head", str(featext_ckpt)]
    return {
        "tensor not found": (good + ["--feature-tensor", "/model.34/Concat_output_7"],
                             f"nearest candidates: {DEFAULT_FEATURE_TENSOR} [1, {SMALL_CHANNELS}, 16, 16]"),
        "channel mismatch": (["--yolo", str(yolox_nano), "--head", str(featext_ckpt), "--feature-tensor", YOLOX_TENSOR],
                             f"head expects {SMALL_CHANNELS} feature channels but tensor '{YOLOX_TENSOR}'"),
        "opset below 16": (good + ["--opset", "15"], "needs opset >= 16"),
        "corrupt onnx": (["--yolo", str(garbage), "--head", str(featext_ckpt)], f"not a readable ONNX model: {garbage}"),
        "text file as onnx": (["--yolo", str(text), "--head", str(featext_ckpt)], str(text)),
        "missing onnx": (["--yolo", str(work / "nope.onnx"), "--head", str(featext_ckpt)], "ONNX model not found"),
        "corrupt checkpoint": (["--yolo", str(stand_in_featext), "--head", str(bad_ckpt)], f"checkpoint {bad_ckpt}"),
        "head onnx without roiseg metadata": (["--yolo", str(stand_in_featext), "--head", str(yolox_nano)],
                                              "roiseg.head_config"),
    }


CASES = ["tensor not found", "channel mismatch", "opset below 16", "corrupt onnx", "text file as onnx",
         "missing onnx", "corrupt checkpoint", "head onnx without roiseg metadata"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_writes_nothing(case, work, stand_in_featext, featext_ckpt, yolox_nano, capsys):
    args, expected = _bad_inputs(work, stand_in_featext, featext_ckpt, yolox_nano)[case]
    out_dir = work / f"bad_{case.replace(' ', '_')}"
    out_dir.mkdir()
    code = main(["fuse", *args, "--out", str(out_dir / "fused.onnx")])
    captured = capsys.readouterr()
    errors = _error_lines(captured.err)
    assert code == 2, captured.err
    assert len(errors) == 1 and expected in errors[0], captured.err
    assert "Traceback" not in captured.err
    assert list(out_dir.iterdir()) == []


@pytest.mark.slow
def test_parity_check_cli_passes_and_fails(work, stand_in_full, stand_in_checkpoint, coco_tiny, capsys):
    ckpt = stand_in_checkpoint
    report = work / "parity.json"
    common = ["--yolo", str(stand_in_full), "--annotations", str(coco_tiny / VAL_JSON),
              "--images", str(coco_tiny / VAL_IMAGES), "--max-images", "1"]
    # Without --fused: fuses into a temporary file first.
    assert main(["parity-check", *common, "--head", str(ckpt), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "stage" in printed and "fused" in printed and "PASS" in printed
    data = json.loads(report.read_text())
    assert data["passed"] is True and set(data["stages"]) == {"trim", "simplify", "fused"}
    assert data["stages"]["fused"]["argmax_agreement"] >= 0.9999
    # A fused model from other weights than --head: exit 1, report still written.
    other = make_checkpoint(work / "other.pth", stand_in_full, seed=3)
    fused = work / "other_fused.onnx"
    assert main(["fuse", "--yolo", str(stand_in_full), "--head", str(other), "--out", str(fused), "--no-simplify"]) == 0
    bad_report = work / "parity_bad.json"
    capsys.readouterr()
    assert main(["parity-check", *common, "--fused", str(fused), "--head", str(ckpt), "--report", str(bad_report)]) == 2
    assert "was not built from the head" in _error_lines(capsys.readouterr().err)[0]  # told by the head's sha256
    fused = without_head_hash(fused, work / "other_fused_no_hash.onnx")  # ... and without it, by the numbers
    assert main(["parity-check", *common, "--fused", str(fused), "--head", str(ckpt), "--report", str(bad_report)]) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "parity outside tolerance" in errors[0] and "fused" in errors[0]
    assert json.loads(bad_report.read_text())["passed"] is False


@pytest.mark.slow
def test_parity_check_cli_on_an_instance_model(work, stand_in_full, stand_in_checkpoint, coco_tiny, capsys):
    """parity-check --fused on a fuse --instances model: per-image table; another head's masks fail with exit 1."""
    ckpt = stand_in_checkpoint
    fused = work / "instances.onnx"
    assert main(["fuse", "--instances", "--yolo", str(stand_in_full), "--head", str(ckpt), "--out", str(fused),
                 "--score-threshold", "0.5"]) == 0
    common = ["--yolo", str(stand_in_full), "--fused", str(fused), "--annotations", str(coco_tiny / VAL_JSON),
              "--images", str(coco_tiny / VAL_IMAGES), "--max-images", "2"]
    report = work / "inst_parity.json"
    capsys.readouterr()
    assert main(["parity-check", *common, "--head", str(ckpt), "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "box max abs" in printed and "2 image(s)" in printed and "PASS" in printed
    data = json.loads(report.read_text())
    assert data["kind"] == "instances" and data["passed"] and sum(r["count"] for r in data["images"]) > 0
    other = make_checkpoint(work / "inst_other.pth", stand_in_full, variant="detail", seed=5)
    assert main(["parity-check", *common, "--head", str(other), "--report", str(report)]) == 2
    assert "was not built from the head" in _error_lines(capsys.readouterr().err)[0]
    common[3] = str(without_head_hash(fused, work / "instances_no_hash.onnx"))
    assert main(["parity-check", *common, "--head", str(other), "--report", str(report)]) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "parity outside tolerance" in errors[0] and "image(s) failed" in errors[0]
    assert main(["parity-check", *common[:4], "--head", str(ckpt), "--report", str(report)]) == 2
    assert "checked on real images" in _error_lines(capsys.readouterr().err)[0]


def test_fuse_accepts_an_exported_head_onnx(work, stand_in_featext, featext_ckpt):
    from roiseg.export.wrapper import export_head
    from roiseg.training.checkpoint import load_head

    head, state = load_head(featext_ckpt)
    head_onnx = work / "head.onnx"
    export_head(head, head_onnx, extractor=state["extractor"])
    from_onnx, from_ckpt = work / "from_head_onnx.onnx", work / "from_ckpt.onnx"
    for head_arg, out in ((head_onnx, from_onnx), (featext_ckpt, from_ckpt)):
        assert main(["fuse", "--yolo", str(stand_in_featext), "--head", str(head_arg), "--out", str(out),
                     "--no-simplify", "--strict"]) == 0
    feeds = {"images": np.random.default_rng(4).random((1, 3, *SMALL_INPUT_HW), dtype=np.float32), "rois": boxes(5)}
    np.testing.assert_allclose(ort_session(from_onnx).run(None, feeds)[0], ort_session(from_ckpt).run(None, feeds)[0],
                               atol=1e-6, rtol=0)
    assert read_props(onnx.load(str(from_onnx)))["roiseg.head_sha256"] == _sha256(head_onnx)


def _perturbed(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose head classifier weights are doubled (a 'simplifier' that changes the results)."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if "classifier" in init.name and len(init.dims) == 4:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2.0, init.name))
            return out
    raise AssertionError("no classifier weight found")


@pytest.mark.parametrize("failure", ["raises", "changes results"])
def test_fuse_keeps_the_unsimplified_model_when_simplification_fails(failure, work, stand_in_featext, featext_ckpt,
                                                                     monkeypatch, capsys):
    import graph_tools.simplify as simplify

    def broken(model):
        if failure == "raises":
            raise RuntimeError("simplifier crashed")
        return _perturbed(model)

    for name in simplify.SIMPLIFIERS:
        monkeypatch.setitem(simplify.SIMPLIFIERS, name, broken)
    out = work / f"fallback_{failure.replace(' ', '_')}.onnx"
    assert main(["fuse", "--yolo", str(stand_in_featext), "--head", str(featext_ckpt), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    reason = "onnxsim failed: RuntimeError: simplifier crashed" if failure == "raises" else "onnxsim's model differs by"
    assert "not simplified" in captured.out and reason in captured.out
    assert "keeping the unsimplified model" in captured.err
    model = onnx.load(str(out))
    assert read_props(model)["roiseg.simplified"] == "false"
    reference = fused_once(work, stand_in_featext, featext_ckpt, simplify=False)
    feeds = {"images": np.random.default_rng(5).random((1, 3, *SMALL_INPUT_HW), dtype=np.float32), "rois": boxes(4)}
    np.testing.assert_array_equal(ort_session(out).run(None, feeds)[0], ort_session(reference).run(None, feeds)[0])
