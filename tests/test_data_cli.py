"""prepare-coco and analyze on the command line: the done-when run and every bad-input case."""

import json
import subprocess
import sys

import pytest

from roiseg.cli import main
from roiseg.errors import InputError

OUT_NAME = "instances_train2017_person_only_no_crowd.json"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[roiseg")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])


def person(ann_id, image_id, bbox=(10, 10, 20, 30), segmentation=None):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": list(bbox), "area": 600.0,
            "segmentation": segmentation if segmentation is not None else [[10, 10, 30, 10, 30, 40, 10, 40]]}


def coco_file(tmp_path, annotations=None, images=None, name="instances_train2017.json"):
    images = images if images is not None else [{"id": i, "file_name": f"{i:012d}.jpg", "height": 80, "width": 100} for i in (1, 2, 3)]
    annotations = annotations if annotations is not None else [person(1, 1), person(2, 2), person(3, 3)]
    path = tmp_path / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}))
    return path


def test_done_when_on_coco_tiny(coco_tiny, tmp_path, capsys):
    src = coco_tiny / "annotations" / "instances_train2017.json"
    code, out, _ = run_cli(capsys, "prepare-coco", "--instances", str(src), "--out-dir", str(tmp_path), "--subset", "10")
    assert code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [OUT_NAME, "instances_train2017_person_only_no_crowd_10.json"]
    code, out, _ = run_cli(capsys, "analyze", "--annotations", str(tmp_path / OUT_NAME),
                           "--out", str(tmp_path / "data_analyze.json"), "--workers", "1")
    assert code == 0
    result = json.loads((tmp_path / "data_analyze.json").read_text())
    assert (result["num_images"], result["num_instances"]) == (37, 101)
    assert [round(result["pixel_ratios"][k], 4) for k in ("background", "target", "non_target")] == [0.4941, 0.4721, 0.0338]
    assert "background 0.4941, target 0.4721, non_target 0.0338" in out
    assert len(result["class_weights"]) == 3 and result["class_weights_formula"]


@pytest.mark.slow  # the CLI start-up imports every command (torch, onnx): ~6 s CPU, > 15 s on a busy machine
def test_entry_point_runs_as_a_process(tmp_path):
    """Exit status and stderr as a user sees them, through ``python -m roiseg``."""
    proc = subprocess.run([sys.executable, "-m", "roiseg", "analyze", "--annotations", str(tmp_path / "absent.json"),
                           "--out", str(tmp_path / "a.json")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: annotation file not found: {tmp_path / 'absent.json'}"]
    assert not (tmp_path / "a.json").exists()


def test_out_dir_defaults_to_the_input_folder(tmp_path, capsys):
    src = coco_file(tmp_path)
    code, out, _ = run_cli(capsys, "prepare-coco", "--instances", str(src))
    assert code == 0 and (tmp_path / OUT_NAME).is_file()
    assert f"{tmp_path / OUT_NAME}: 3 images, 3 person annotations" in out


# --------------------------------------------------------------------------------------------
# Cases that stop: one line naming the file (and the id), exit 2, no output file
# --------------------------------------------------------------------------------------------
def _stops(capsys, tmp_path, src, *fragments):
    out_dir = tmp_path / "out"
    code, _, err = run_cli(capsys, "prepare-coco", "--instances", str(src), "--out-dir", str(out_dir), "--subset", "2")
    assert_one_line_error(code, err, *fragments)
    assert not out_dir.exists()
    code, _, err = run_cli(capsys, "analyze", "--annotations", str(src), "--out", str(tmp_path / "analysis.json"))
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "analysis.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_missing_file(tmp_path, capsys):
    _stops(capsys, tmp_path, tmp_path / "absent.json", "not found", "absent.json")


def test_folder_instead_of_file(tmp_path, capsys):
    (tmp_path / "a_folder").mkdir()
    _stops(capsys, tmp_path, tmp_path / "a_folder", "a_folder", "is a folder")


def test_malformed_json(tmp_path, capsys):
    src = tmp_path / "broken.json"
    src.write_text('{"images": [1, 2,\n  "annotations": }')
    _stops(capsys, tmp_path, src, "broken.json", "malformed JSON", "line 2")


@pytest.mark.parametrize("missing", ["annotations", "images"])
def test_json_without_required_field(tmp_path, capsys, missing):
    src = tmp_path / "partial.json"
    data = {"images": [], "annotations": [], "categories": []}
    del data[missing]
    src.write_text(json.dumps(data))
    _stops(capsys, tmp_path, src, "partial.json", f"'{missing}'")


def test_not_an_object(tmp_path, capsys):
    src = tmp_path / "list.json"
    src.write_text("[1, 2]")
    _stops(capsys, tmp_path, src, "list.json", "JSON object")


def test_malformed_records_name_their_id(tmp_path, capsys):
    src = coco_file(tmp_path, annotations=[person(1, 1), person(77, 9)])
    _stops(capsys, tmp_path, src, "instances_train2017.json", "annotation id 77", "image_id 9")
    src = coco_file(tmp_path, annotations=[person(1, 1), person(78, 2, segmentation=[[1, 2, 3, 4, 5, 6, 7]])])
    _stops(capsys, tmp_path, src, "instances_train2017.json", "annotation id 78", "odd")
    src = coco_file(tmp_path, images=[{"id": 5, "file_name": "x.jpg", "height": 10}], annotations=[])
    _stops(capsys, tmp_path, src, "instances_train2017.json", "image id 5", "width")
    src = coco_file(tmp_path, annotations=[person(79, 1, bbox=(1, 2, 3))])
    _stops(capsys, tmp_path, src, "annotation id 79", "bbox")


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(InputError):
        main(["--debug", "analyze", "--annotations", str(tmp_path / "absent.json")])
    with pytest.raises(InputError):
        main(["analyze", "--annotations", str(tmp_path / "absent.json"), "--debug"])


def test_prepare_images_dir_must_exist(tmp_path, capsys):
    src = coco_file(tmp_path)
    code, _, err = run_cli(capsys, "prepare-coco", "--instances", str(src), "--images-dir", str(tmp_path / "nope"))
    assert_one_line_error(code, err, "images folder not found", "nope")
    assert not (tmp_path / OUT_NAME).exists()


# --------------------------------------------------------------------------------------------
# Cases that are skipped and counted
# --------------------------------------------------------------------------------------------
def test_zero_area_bbox_and_short_polygon_are_skipped_and_counted(tmp_path, capsys):
    anns = [person(1, 1), person(2, 1, bbox=(5, 5, 0, 10)),  # zero-area bbox
            person(3, 2, segmentation=[[10, 10, 30, 10, 30, 40, 10, 40], [1, 1, 2, 2]]),  # one short polygon
            person(4, 3, segmentation=[[1, 1, 9, 9]])]  # only a short polygon: image 3 is left without a person
    src = coco_file(tmp_path, annotations=anns)
    code, out, _ = run_cli(capsys, "prepare-coco", "--instances", str(src), "--out-dir", str(tmp_path / "p"))
    assert code == 0
    assert "zero_area_bbox 1" in out and "short_polygon 2" in out and "empty_segmentation 1" in out
    prepared = json.loads((tmp_path / "p" / OUT_NAME).read_text())
    assert [a["id"] for a in prepared["annotations"]] == [1, 3]
    assert [img["id"] for img in prepared["images"]] == [1, 2]

    code, out, _ = run_cli(capsys, "analyze", "--annotations", str(src), "--out", str(tmp_path / "a.json"), "--workers", "1")
    assert code == 0 and "zero_area_bbox 1" in out
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["skipped_annotations"] == {"zero_area_bbox": 1, "short_polygon": 2, "empty_segmentation": 1}
    assert result["num_instances"] == 2 and result["num_images"] == 2


def test_image_absent_on_disk_is_dropped_by_prepare_and_counted(tmp_path, capsys):
    src = coco_file(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    for i in (1, 3):
        (images / f"{i:012d}.jpg").write_bytes(b"x")
    code, out, _ = run_cli(capsys, "prepare-coco", "--instances", str(src), "--images-dir", str(images))
    assert code == 0 and "missing_file 1" in out
    prepared = json.loads((tmp_path / OUT_NAME).read_text())
    assert [img["id"] for img in prepared["images"]] == [1, 3]
    assert [a["image_id"] for a in prepared["annotations"]] == [1, 3]
