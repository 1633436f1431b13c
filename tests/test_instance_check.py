"""``fuse --instances`` checks the detections on the check images before it writes anything: a
detector fed the wrong preprocessing finds nobody on a photo of 13 persons (refused, naming the
likely causes); with its own preprocessing it finds them; without a photo it warns."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_graph import YOLOX_PRE

from roiseg.conventions import FUSED_BOXES_OUTPUT, FUSED_SCORES_OUTPUT
from roiseg.detection.props import InstanceProps
from roiseg.errors import InputError
from roiseg.export.instance_check import check_detections
from roiseg.export.instances import build_instances, fuse_instances
from roiseg.export.options import FuseOptions

PHOTO = "images/val2017/000000184324.jpg"  # 13 persons


def test_a_detector_fed_the_wrong_preprocessing_is_refused_on_a_photo(yolox_nano, yolox_baseline_checkpoint, coco_tiny, tmp_path):
    out = tmp_path / "instances.onnx"
    with pytest.raises(InputError, match=r"finds no person on the check images .*--det-preprocessing"):
        fuse_instances(yolox_nano, yolox_baseline_checkpoint, out, simplify=False, check_images=[coco_tiny / PHOTO])
    assert not out.exists()


def test_with_its_own_preprocessing_it_finds_the_persons(yolox_nano, yolox_baseline_checkpoint, coco_tiny, tmp_path):
    report = fuse_instances(yolox_nano, yolox_baseline_checkpoint, tmp_path / "instances.onnx", simplify=False,
                            check_images=[coco_tiny / PHOTO], det_preprocessing=YOLOX_PRE)
    assert report.out.is_file() and not [w for w in report.warnings if "no person" in w or "YOLOX" in w]


def test_without_a_photo_it_warns_and_a_yolox_detector_on_rgb_is_named(yolox_nano, yolox_baseline_checkpoint):
    build = build_instances(yolox_nano, yolox_baseline_checkpoint, simplify=False)
    warnings = check_detections(build.build.model, build.build.meta, build.props, FuseOptions())
    assert any("--check-image" in w for w in warnings) and any("--det-preprocessing bgr,1" in w for w in warnings)


def test_impossible_scores_and_boxes_are_refused(yolox_nano, yolox_baseline_checkpoint, monkeypatch):
    import roiseg.export.instance_check as check

    build = build_instances(yolox_nano, yolox_baseline_checkpoint, simplify=False)
    props: InstanceProps = build.props
    cases = [([[10, 10, 50, 80]], [1.2], "outside \\[0, 1\\]"),
             ([[10, 10, 11, 80], [5, 5, 6.5, 6], [1, 1, 30, 30]], [0.9, 0.8, 0.7], "2 of 3 boxes are under 2 px")]
    for boxes, scores, why in cases:
        found = [(np.array(boxes, np.float32), np.array(scores, np.float32))]
        monkeypatch.setattr(check, "detections_on", lambda *a, found=found: found)
        with pytest.raises(InputError, match=why + ".*--det-format"):
            check_detections(build.build.model, build.build.meta, props, FuseOptions())
    assert FUSED_BOXES_OUTPUT in [o.name for o in build.build.model.graph.output]
    assert FUSED_SCORES_OUTPUT in [o.name for o in build.build.model.graph.output]
