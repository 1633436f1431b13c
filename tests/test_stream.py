"""predict --source: folders, globs and videos through ROI and instance models; overlays of the input's
size and frame rate; COCO results that pycocotools loads back; a .partial that is valid JSON as it goes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from helpers_graph import image_folder
from pycocotools.coco import COCO

from roiseg.cli import main
from roiseg.runtime.sources import open_source, prefetch

IMAGES = ["000000020992.jpg", "000000184324.jpg", "000000005001.jpg"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, coco_tiny):
    return image_folder(tmp_path_factory.mktemp("frames"), coco_tiny, IMAGES)


def _video(path, n: int, size=(96, 128), fps=12.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (size[1], size[0]))
    rng = np.random.default_rng(0)
    for i in range(n):
        frame = np.full((*size, 3), 40 + 5 * i, np.uint8)
        cv2.rectangle(frame, (20 + i, 10), (60 + i, 80), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
        writer.write(frame)
    writer.release()
    return path


def test_sources_folder_glob_video_and_errors(folder, tmp_path):
    assert [f.name for f in prefetch(open_source(folder).frames())] == sorted(IMAGES)
    assert open_source(str(folder / "*184324.jpg")).count == 1
    video = open_source(_video(tmp_path / "v.avi", 7))
    assert video.kind == "video" and video.count == 7 and video.fps == pytest.approx(12.0) and video.size == (96, 128)
    assert [f.index for f in prefetch(video.frames(), depth=2)] == list(range(7))
    for bad in (tmp_path / "missing", str(tmp_path / "*.png")):
        with pytest.raises(Exception, match="--source"):
            open_source(bad)


def test_a_roi_model_on_a_folder_with_coco_boxes_gives_loadable_results(roi_model, folder, coco_tiny, tmp_path, capsys):
    ann = coco_tiny / "annotations/instances_val2017.json"
    out, results = tmp_path / "overlays", tmp_path / "results.json"
    code = main(["predict", "--model", str(roi_model), "--source", str(folder), "--rois-json", str(ann), "--out", str(out),
                 "--save-json", str(results), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(n.replace(".jpg", ".png") for n in IMAGES)
    assert not results.with_name(results.name + ".partial").exists()
    coco = COCO(str(ann))
    dets = coco.loadRes(str(results))
    persons = {im: len(coco.getAnnIds(imgIds=[im], catIds=[1], iscrowd=False)) for im in (20992, 184324, 5001)}
    per_image = {im: len(dets.getAnnIds(imgIds=[im])) for im in persons}
    assert per_image == persons and sum(per_image.values()) > 0
    first = cv2.imread(str(out / "000000020992.png"))
    assert first.shape == cv2.imread(str(folder / "000000020992.jpg")).shape


def test_an_instance_model_on_a_video_writes_a_video_of_the_same_size_and_rate(instance_model, tmp_path, capsys,
                                                                               monkeypatch):
    import roiseg.runtime.stream as stream

    monkeypatch.setattr(stream, "PARTIAL_EVERY", 2)
    partials = []
    real = stream.write_json

    def spy(path, obj, indent=2):
        if path.name.endswith(".partial"):
            partials.append(json.loads(json.dumps(obj)))
        return real(path, obj, indent)

    monkeypatch.setattr(stream, "write_json", spy)
    video, out, results = _video(tmp_path / "in.avi", 5), tmp_path / "out.avi", tmp_path / "r.json"
    code = main(["predict", "--model", str(instance_model), "--source", str(video), "--out", str(out),
                 "--save-json", str(results), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    back = cv2.VideoCapture(str(out))
    assert int(back.get(cv2.CAP_PROP_FRAME_COUNT)) == 5 and back.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    assert (int(back.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(back.get(cv2.CAP_PROP_FRAME_WIDTH))) == (96, 128)
    assert isinstance(json.loads(results.read_text()), list) and len(partials) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.avi", "out.avi", "r.json"]  # no temporary file left


def test_a_roi_model_stream_needs_its_boxes(roi_model, folder, capsys):
    code = main(["predict", "--model", str(roi_model), "--source", str(folder), "--device", "cpu"])
    assert code == 2 and "--rois-json" in capsys.readouterr().err


def test_ctrl_c_keeps_what_is_finished(instance_model, tmp_path, monkeypatch, capsys):
    import roiseg.runtime.stream as stream

    real_step = stream._instance_step

    def interrupting(predictor):
        step = real_step(predictor)

        def wrapped(frame):
            if frame.index == 3:
                raise KeyboardInterrupt
            return step(frame)
        return wrapped

    monkeypatch.setattr(stream, "_instance_step", interrupting)
    video, out, results = _video(tmp_path / "in.avi", 6), tmp_path / "out.avi", tmp_path / "r.json"
    code = main(["predict", "--model", str(instance_model), "--source", str(video), "--out", str(out),
                 "--save-json", str(results), "--device", "cpu"])
    assert code == 130 and "interrupted after 3 frame(s)" in capsys.readouterr().out
    assert int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert isinstance(json.loads(results.read_text()), list)
