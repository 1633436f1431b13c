"""roiseg.export.wrapper: the head as ONNX with native RoiAlign (half_pixel), dynamic ROI count, parity with torch."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers_graph import boxes, ort_session

from graph_tools import node_attributes, nodes_of_type
from roiseg.conventions import ROI_AXIS
from roiseg.export.wrapper import export_head
from roiseg.export.head_source import head_config_of
from roiseg.errors import InputError
from roiseg.modeling import HeadConfig, build_head

H, W, C, STRIDE = 64, 96, 16, 8


def _head(variant: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = HeadConfig(in_channels=C, stride=STRIDE, input_hw=(H, W), variant=variant, hidden=32, num_convs=1,
                     detail_channels=8)
    head = build_head(cfg).eval()
    with torch.no_grad():
        head.classifier.weight.mul_(4.0)
    return head


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]


@pytest.mark.parametrize("variant", ["baseline", "detail"])
def test_export_signature_and_native_roi_align(variant):
    model = export_head(_head(variant))
    inputs = {vi.name: _dims(vi) for vi in model.graph.input}
    expected = {"features": [1, C, H // STRIDE, W // STRIDE], "rois": [ROI_AXIS, 4]}
    if variant == "detail":
        expected["images"] = [1, 3, H, W]
    assert inputs == expected
    assert [(o.name, _dims(o)) for o in model.graph.output] == [("masks", [ROI_AXIS, 3, H, W])]
    assert model.opset_import[0].version == 17
    nodes = nodes_of_type(model, "RoiAlign")
    assert len(nodes) == (2 if variant == "detail" else 1)
    attrs = [node_attributes(n) for n in nodes]
    assert all(a["coordinate_transformation_mode"] == "half_pixel" for a in attrs)
    feat = [a for a in attrs if a["output_height"] == 14]
    assert len(feat) == 1 and feat[0]["spatial_scale"] == pytest.approx(1.0 / STRIDE) and feat[0]["sampling_ratio"] == 2
    if variant == "detail":
        img = [a for a in attrs if a["output_height"] == 56]
        assert len(img) == 1 and img[0]["spatial_scale"] == pytest.approx(1.0)
    assert head_config_of(model) == _head(variant).cfg
    # the class softmax of the full-resolution masks is element-wise ops: onnxruntime's CPU Softmax on a
    # non-last axis transposes the [N, 3, H, W] tensor (docs/performance.md, "The class softmax")
    assert not nodes_of_type(model, "Softmax")


@pytest.mark.parametrize("variant", ["baseline", "detail"])
def test_onnx_head_matches_torch_for_1_7_and_64_rois(variant):
    head = _head(variant, seed=1)
    sess = ort_session(export_head(head))
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, C, H // STRIDE, W // STRIDE), dtype=np.float32)
    image = rng.random((1, 3, H, W), dtype=np.float32)
    for n in (1, 7, 64):
        rois = boxes(n, seed=n)
        rois[0] = [0.0, 0.0, 1.0, 1.0]  # whole image, touching every border
        feeds = {"features": feats, "rois": rois}
        if variant == "detail":
            feeds["images"] = image
        got = sess.run(None, feeds)[0]
        with torch.no_grad():
            ref = head.predict_masks(torch.from_numpy(feats), torch.from_numpy(rois), torch.zeros(n, dtype=torch.int64),
                                     torch.from_numpy(image)).numpy()
        assert got.shape == (n, 3, H, W)
        assert np.abs(got - ref).max() < 1e-5
        assert (got.argmax(1) == ref.argmax(1)).mean() > 0.9999


def test_export_other_opsets_and_refuses_below_16(tmp_path):
    head = _head("detail")
    with pytest.raises(InputError, match="opset >= 16"):
        export_head(head, tmp_path / "h15.onnx", opset=15)
    assert not (tmp_path / "h15.onnx").exists()
    for opset in (16, 21):  # 21 is above the TorchScript exporter's maximum: exported, then converted
        path = tmp_path / f"h{opset}.onnx"
        model = export_head(head, path, opset=opset)
        assert onnx.load(str(path)).opset_import[0].version == opset == model.opset_import[0].version
        assert all(node_attributes(n)["coordinate_transformation_mode"] == "half_pixel" for n in nodes_of_type(model, "RoiAlign"))
        out = ort_session(path).run(None, {"features": np.ones((1, C, 8, 12), np.float32), "rois": boxes(3),
                                           "images": np.ones((1, 3, H, W), np.float32)})[0]
        assert out.shape == (3, 3, H, W)


def test_a_checkpoint_is_exported_once_per_process_and_a_rewritten_file_again(tmp_path, stand_in_featext):
    """HeadSource keeps each export by the file's sha256: the second call returns an equal, separate copy; a new
    checkpoint written to the same path (other weights) is exported anew."""
    from helpers_graph import make_checkpoint

    from roiseg.export.head_source import load_head_source

    path = make_checkpoint(tmp_path / "head.pth", stand_in_featext, seed=0)
    first = load_head_source(path).to_onnx(17)
    again = load_head_source(path).to_onnx(17)
    assert again.SerializeToString() == first.SerializeToString()
    again.graph.ClearField("node")  # a caller's edit does not reach the next copy
    assert load_head_source(path).to_onnx(17).SerializeToString() == first.SerializeToString()
    make_checkpoint(path, stand_in_featext, seed=1)
    other = load_head_source(path).to_onnx(17)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in first.graph.initializer}
    changed = [i.name for i in other.graph.initializer
               if i.name in weights and not np.array_equal(onnx.numpy_helper.to_array(i), weights[i.name])]
    assert changed, "the rewritten checkpoint's weights are exported"
    at16 = load_head_source(path).to_onnx(16)  # another setting, another export
    assert [o.version for o in at16.opset_import if o.domain in ("", "ai.onnx")] == [16]


def test_a_detector_is_trimmed_once_per_process_and_a_rewritten_file_again(tmp_path, caplog):
    """build_fused keeps the trimmed detector by file, tensors and opset: the second build of the same
    detector file does not trim it again and gets its own copy; the file rewritten (other channels) is trimmed anew."""
    import logging

    from helpers_graph import make_checkpoint

    from graph_tools import tensor_shapes
    from roiseg.export.fuse import build_fused
    from roiseg.synthetic.detector import build_stand_in_detector

    tensor = "/model.34/Concat_output_0"
    detector = build_stand_in_detector(tmp_path / "detector.onnx", channels=16, input_hw=(64, 64))
    head = make_checkpoint(tmp_path / "head.pth", detector)
    caplog.set_level(logging.INFO, logger="roiseg.export.fuse")
    first, again = build_fused(detector, head), build_fused(detector, head)
    assert sum("trimming detector.onnx" in r.getMessage() for r in caplog.records) == 1
    assert again.detector.SerializeToString() == first.detector.SerializeToString()
    again.detector.graph.ClearField("node")  # a caller's edit does not reach the next copy
    assert build_fused(detector, head).detector.SerializeToString() == first.detector.SerializeToString()
    build_stand_in_detector(detector, channels=32, input_hw=(64, 64))
    rewritten = build_fused(detector, make_checkpoint(tmp_path / "head32.pth", detector))
    assert sum("trimming detector.onnx" in r.getMessage() for r in caplog.records) == 2
    assert tensor_shapes(rewritten.detector)[tensor][1] == 32 and tensor_shapes(first.detector)[tensor][1] == 16


def test_parity_exposes_a_detector_once_per_process_and_a_rewritten_file_again(tmp_path, monkeypatch):
    """verify.rebuild.exposed_detector keeps the detector with its taps exposed by file stamp and tensors: read
    once, the caller's own copy each time, every original output kept; a rewritten file is read anew."""
    import graph_tools as gt
    from roiseg.synthetic.detector import build_stand_in_detector
    from roiseg.verify import rebuild

    reads, load = [], gt.load_model
    monkeypatch.setattr(rebuild.gt, "load_model", lambda path: reads.append(path) or load(path))
    tensor = "/model.34/Concat_output_0"
    detector = build_stand_in_detector(tmp_path / "detector.onnx", channels=16, input_hw=(64, 64))
    original_outputs = [o.name for o in load(detector).graph.output]
    first = rebuild.exposed_detector(detector, [tensor])
    assert sorted(o.name for o in first.graph.output) == sorted([*original_outputs, tensor])
    again = rebuild.exposed_detector(detector, [tensor])
    assert len(reads) == 1 and again.SerializeToString() == first.SerializeToString()
    again.graph.ClearField("node")  # a caller's edit does not reach the next copy
    assert rebuild.exposed_detector(detector, [tensor]).SerializeToString() == first.SerializeToString()
    build_stand_in_detector(detector, channels=32, input_hw=(64, 64))
    rewritten = rebuild.exposed_detector(detector, [tensor])
    assert len(reads) == 2 and gt.tensor_shapes(rewritten)[tensor][1] == 32
