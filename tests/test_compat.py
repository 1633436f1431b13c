"""roiseg.features.compat: the one head/extractor compatibility policy, and graph_tools errors at roiseg's boundary."""

from __future__ import annotations

from dataclasses import replace

import pytest

from graph_tools import GraphError
from roiseg.errors import InputError, graph_errors
from roiseg.features.compat import check_head_features
from roiseg.features.extractor import ExtractorInfo
from roiseg.modeling import HeadConfig

INFO = ExtractorInfo(path="det.onnx", sha256="a" * 64, feature_tensor="/model.34/Concat_output_0", input_name="images",
                     input_hw=(64, 64), channels=16, feature_hw=(8, 8), stride=8, opset=17, preprocessing="{}")
HEAD = HeadConfig(in_channels=16, stride=8, input_hw=(64, 64))


def test_matching_head_and_extractor_give_no_warning():
    assert check_head_features(HEAD, INFO.to_dict(), INFO, "run/best.pth", strict=True) == []


@pytest.mark.parametrize("field, value, words", [
    ("in_channels", 32, "32 feature channels"),
    ("input_hw", (96, 96), "[96, 96]"),
    ("stride", 16, "stride 16"),
])
def test_geometry_mismatch_is_an_error_even_when_not_strict(field, value, words):
    head = replace(HEAD, **{field: value})
    with pytest.raises(InputError, match="best.pth") as err:
        check_head_features(head, INFO.to_dict(), INFO, "run/best.pth", strict=False)
    assert words in str(err.value)


@pytest.mark.parametrize("recorded, words", [
    ({"sha256": "b" * 64, "path": "other.onnx", "feature_tensor": INFO.feature_tensor}, "other.onnx"),
    ({"sha256": INFO.sha256, "feature_tensor": "/model.22/Concat_output_0"}, "/model.22/Concat_output_0"),
    (None, "records no extractor sha256"),
])
def test_identity_mismatch_warns_and_strict_refuses(recorded, words):
    notes = check_head_features(HEAD, recorded, INFO, "head.onnx", strict=False)
    assert len(notes) == 1 and words in notes[0] and "head.onnx" in notes[0]
    with pytest.raises(InputError, match="strict"):
        check_head_features(HEAD, recorded, INFO, "head.onnx", strict=True)


def test_checkpoints_of_roiseg_0_1_name_the_tensor_tensor():
    legacy = INFO.to_dict()
    legacy["tensor"] = legacy.pop("feature_tensor")
    assert ExtractorInfo.from_dict(legacy) == INFO
    assert check_head_features(HEAD, legacy, INFO, "old.pth", strict=True) == []


def test_graph_errors_become_input_errors_with_the_same_message():
    with pytest.raises(InputError, match="tensor 'x' not found") as err:
        with graph_errors():
            raise GraphError("tensor 'x' not found in det.onnx")
    assert isinstance(err.value.__cause__, GraphError)
