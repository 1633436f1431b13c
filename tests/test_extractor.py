"""Feature extraction from detector ONNX files: stand-ins, yolox_nano, errors, provider choice."""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from roiseg.conventions import DEFAULT_FEATURE_TENSOR
from roiseg.errors import InputError
from roiseg.features import providers as prov
from roiseg.features.extractor import ExtractorInfo, OnnxFeatureExtractor, describe_extractor, feature_graph
from conftest import SMALL_CHANNELS, SMALL_INPUT_HW

SMALL_FEATURE_HW = (SMALL_INPUT_HW[0] // 8, SMALL_INPUT_HW[1] // 8)


def _run_exposed(path, tensor: str, x: np.ndarray) -> np.ndarray:
    """Run the original model with ``tensor`` appended to its outputs (plain onnx, no trimming)."""
    model = onnx.load(str(path))
    if tensor not in [o.name for o in model.graph.output]:
        model.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([tensor], {session.get_inputs()[0].name: x})[0]


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _rand_images(n: int, hw: tuple[int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, *hw), dtype=np.float32)


def test_full_detector_internal_tensor(stand_in_full):
    ext = OnnxFeatureExtractor(stand_in_full, device="cpu")
    info = ext.info
    assert (info.input_name, info.input_hw, info.channels) == ("images", SMALL_INPUT_HW, SMALL_CHANNELS)
    assert info.feature_hw == SMALL_FEATURE_HW and info.stride == 8
    assert info.feature_tensor == DEFAULT_FEATURE_TENSOR and info.opset == 17
    assert info.sha256 == _sha256(stand_in_full)
    # Only the part feeding the features runs: the detection head (model.35) is gone.
    assert [o.name for o in ext.session.get_outputs()] == [DEFAULT_FEATURE_TENSOR]
    graph = feature_graph(onnx.load(str(stand_in_full)), DEFAULT_FEATURE_TENSOR)
    assert not [n.name for n in graph.graph.node if n.name.startswith("/model.35/")]

    x = _rand_images(1, SMALL_INPUT_HW)
    got = ext(torch.from_numpy(x))
    assert got.dtype == torch.float32 and got.device == torch.device("cpu")
    np.testing.assert_allclose(got.numpy(), _run_exposed(stand_in_full, DEFAULT_FEATURE_TENSOR, x), rtol=1e-5, atol=1e-6)
    assert ext.calls == 1


def test_extract_bgr_applies_the_preprocessing(stand_in_full):
    ext = OnnxFeatureExtractor(stand_in_full, device="cpu")
    bgr = np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    rgb = cv2.resize(bgr[:, :, ::-1].copy(), SMALL_INPUT_HW[::-1], interpolation=cv2.INTER_LINEAR)
    x = (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None].copy()
    expected = _run_exposed(stand_in_full, DEFAULT_FEATURE_TENSOR, x)
    np.testing.assert_allclose(ext.extract_bgr(bgr).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_featext_model(stand_in_featext):
    ext = OnnxFeatureExtractor(stand_in_featext, device="cpu")
    assert ext.info.channels == SMALL_CHANNELS and ext.info.stride == 8
    assert [o.name for o in ext.session.get_outputs()] == [DEFAULT_FEATURE_TENSOR]
    x = _rand_images(1, SMALL_INPUT_HW, seed=2)
    ref = ort.InferenceSession(str(stand_in_featext), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(ext(x).numpy(), ref.run([DEFAULT_FEATURE_TENSOR], {"images": x})[0], rtol=1e-5, atol=1e-6)


def test_yolox_nano_generic_names(yolox_nano):
    ext = OnnxFeatureExtractor(yolox_nano, feature_tensor="input.663", device="cpu")
    info = ext.info
    assert info.input_hw == (416, 416) and info.stride == 8
    assert info.channels == 64 and info.feature_hw == (52, 52) and info.opset == 11
    x = _rand_images(1, (416, 416), seed=3)
    np.testing.assert_allclose(ext(x).numpy(), _run_exposed(yolox_nano, "input.663", x), rtol=1e-4, atol=1e-5)


def test_batched_extraction_of_static_batch_model(stand_in_featext):
    ext = OnnxFeatureExtractor(stand_in_featext, device="cpu")
    x = _rand_images(3, SMALL_INPUT_HW, seed=4)
    ref = ort.InferenceSession(str(stand_in_featext), providers=["CPUExecutionProvider"])
    singles = np.concatenate([ref.run([DEFAULT_FEATURE_TENSOR], {"images": x[i : i + 1]})[0] for i in range(3)])
    first = ext(x)  # checks batching against one-by-one runs
    assert ext.batched is True
    calls = ext.calls
    second = ext(x)
    assert ext.calls == calls + 1  # verified: one run for the whole batch from now on
    for got in (first, second):
        assert got.shape == (3, SMALL_CHANNELS, *SMALL_FEATURE_HW)
        np.testing.assert_allclose(got.numpy(), singles, rtol=1e-4, atol=1e-5)


def test_io_binding_path_matches_plain_run(stand_in_featext):
    # The IOBinding code used on CUDA, exercised with CPU memory: same binding calls, same results.
    bound = OnnxFeatureExtractor(stand_in_featext, device="cpu", io_binding=True)
    plain = OnnxFeatureExtractor(stand_in_featext, device="cpu")
    assert bound.io_binding and not plain.io_binding
    x = _rand_images(2, SMALL_INPUT_HW, seed=5)
    got = bound(torch.from_numpy(x))
    assert got.dtype == torch.float32 and bound.batched is True
    np.testing.assert_allclose(got.numpy(), plain(x).numpy(), rtol=1e-5, atol=1e-6)


def test_wrong_tensor_lists_nearest_candidates(stand_in_full):
    wrong = "/model.34/Concat_output_1"
    for make in (lambda: describe_extractor(stand_in_full, wrong), lambda: OnnxFeatureExtractor(stand_in_full, wrong, "cpu")):
        with pytest.raises(InputError) as exc:
            make()
        msg = str(exc.value)
        assert wrong in msg and "nearest candidates" in msg
        assert f"{DEFAULT_FEATURE_TENSOR} [1, {SMALL_CHANNELS}, {SMALL_FEATURE_HW[0]}, {SMALL_FEATURE_HW[1]}]" in msg
        assert "\n" not in msg


def test_missing_extractor_file(tmp_path):
    missing = tmp_path / "nope.onnx"
    for make in (lambda: describe_extractor(missing), lambda: OnnxFeatureExtractor(missing, device="cpu")):
        with pytest.raises(InputError, match="nope.onnx"):
            make()


def test_describe_matches_extractor_and_roundtrips(stand_in_full):
    info = describe_extractor(stand_in_full)
    assert info == OnnxFeatureExtractor(stand_in_full, device="cpu").info
    back = ExtractorInfo.from_dict(json.loads(json.dumps(info.to_dict())))
    assert back == info
    assert info.feature_bytes_fp16 == SMALL_CHANNELS * SMALL_FEATURE_HW[0] * SMALL_FEATURE_HW[1] * 2


def test_wrong_image_shape_is_rejected(stand_in_featext):
    ext = OnnxFeatureExtractor(stand_in_featext, device="cpu")
    with pytest.raises(ValueError, match="expected images"):
        ext(np.zeros((1, 3, 64, 64), np.float32))


def _conv_model(path, input_hw: tuple[int, int], strides: tuple[int, int], only_features: bool) -> None:
    """images [1,3,H,W] -> Conv(strides) 'feat' [1,4,H/sy,W/sx] (-> Relu 'det' unless only_features)."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 1, 1], np.linspace(-1, 1, 12).tolist())
    nodes = [helper.make_node("Conv", ["images", "w"], ["feat"], strides=list(strides))]
    fh, fw = input_hw[0] // strides[0], input_hw[1] // strides[1]
    outputs = [helper.make_tensor_value_info("feat", TensorProto.FLOAT, [1, 4, fh, fw])]
    if not only_features:
        nodes.append(helper.make_node("Relu", ["feat"], ["det"]))
        outputs = [helper.make_tensor_value_info("det", TensorProto.FLOAT, [1, 4, fh, fw])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, *input_hw])],
                              outputs, [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_model_that_already_outputs_the_tensor(tmp_path):
    path = tmp_path / "feat_only.onnx"
    _conv_model(path, (32, 48), (4, 4), only_features=True)
    info = describe_extractor(path, "feat")
    assert (info.input_hw, info.feature_hw, info.stride, info.channels, info.opset) == ((32, 48), (8, 12), 4, 4, 13)


def test_unequal_strides_are_rejected(tmp_path):
    path = tmp_path / "aniso.onnx"
    _conv_model(path, (32, 32), (2, 4), only_features=False)
    with pytest.raises(InputError, match="strides"):
        describe_extractor(path, "feat")


# --------------------------------------------------------------------------------------------
# Provider selection
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend torch sees 2 CUDA devices and onnxruntime was built with TensorRT and CUDA."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: [prov.TENSORRT_EP, prov.CUDA_EP, prov.CPU_EP])


def test_cpu_device_picks_cpu_only(fake_cuda):
    choice = prov.choose_providers("cpu")
    assert choice.names == [prov.CPU_EP] and choice.device == torch.device("cpu")


def test_cuda_device_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not usable"):
        prov.choose_providers("cuda")
    assert prov.choose_providers("auto").names == [prov.CPU_EP]


def test_cuda_provider_must_be_in_onnxruntime(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [prov.CPU_EP])
    assert prov.choose_providers("auto").names == [prov.CPU_EP]
    with pytest.raises(InputError, match=prov.CUDA_EP):
        prov.choose_providers("cuda")


def test_gpu_order_and_tensorrt_options(fake_cuda, tmp_path):
    choice = prov.choose_providers("auto", trt_cache_dir=tmp_path / "trt")
    assert choice.names == [prov.TENSORRT_EP, prov.CUDA_EP, prov.CPU_EP]
    assert choice.device == torch.device("cuda", 0)
    trt_options = choice.providers[0][1]
    assert trt_options["trt_fp16_enable"] is False
    assert trt_options["trt_engine_cache_enable"] is True and trt_options["trt_engine_cache_path"] == str(tmp_path / "trt")
    second = prov.choose_providers("cuda:1", use_tensorrt=False)
    assert second.names == [prov.CUDA_EP, prov.CPU_EP]
    assert second.providers[0][1]["device_id"] == 1 and second.device == torch.device("cuda", 1)
    with pytest.raises(InputError, match="2 CUDA device"):
        prov.choose_providers("cuda:2")


@pytest.mark.parametrize("bad", ["gpu", "cpu:1", "cuda:x", ""])
def test_bad_device_string(bad):
    with pytest.raises(InputError, match="device .* is not one of"):
        prov.choose_providers(bad)


def test_session_device_follows_providers_really_loaded(fake_cuda):
    choice = prov.choose_providers("cuda")

    class _Session:
        def __init__(self, used):
            self.used = used

        def get_providers(self):
            return self.used

    assert prov.session_device(_Session([prov.CPU_EP]), choice) == torch.device("cpu")
    assert prov.session_device(_Session([prov.CUDA_EP, prov.CPU_EP]), choice) == torch.device("cuda", 0)


def test_describe_reads_a_rewritten_detector_again(tmp_path):
    """describe_extractor is kept per process for a file as it is on disk: the same file gives the same info,
    another detector written to the same path (other channels) gives its own."""
    from roiseg.synthetic.detector import build_stand_in_detector

    path = tmp_path / "detector.onnx"
    build_stand_in_detector(path, channels=16, input_hw=(64, 64))
    first = describe_extractor(path)
    assert describe_extractor(path) == first and first.channels == 16
    build_stand_in_detector(path, channels=24, input_hw=(96, 96))
    second = describe_extractor(path)
    assert (second.channels, second.input_hw) == (24, (96, 96)) and second.sha256 != first.sha256
    with pytest.raises(InputError, match="missing.onnx"):
        describe_extractor(tmp_path / "missing.onnx")
