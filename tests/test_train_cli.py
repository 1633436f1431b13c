"""``roiseg train`` on bad input: one ``error:`` line naming the culprit, exit 2, no output written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers_train import make_person_data, tiny_overrides
from roiseg.cli import main
from roiseg.training.checkpoint import find_latest


def _argv(items: dict) -> list[str]:
    argv = ["train"]
    for k, v in items.items():
        text = json.dumps(v) if isinstance(v, str) else str(v).lower() if isinstance(v, bool) else repr(v)
        argv += ["--set", f"{k}={text}"]
    return argv


def run_train(capsys, items: dict, *extra: str) -> tuple[int, str]:
    code = main(_argv(items) + list(extra))
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    assert code == 2, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-2000:]
    assert "Traceback" not in err
    for f in fragments:
        assert f in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, stand_in_full):
    """Generated data and one finished 1-epoch run (its checkpoint is used by the resume cases)."""
    from roiseg.training.config import load_config
    from roiseg.training.engine import train

    root = tmp_path_factory.mktemp("train_cli")
    data = make_person_data(root / "data", n_train=5, n_val=3)
    run = root / "run"
    train(load_config(None, tiny_overrides(data, stand_in_full, run, train__epochs=1, train__picture=False)))
    return {"root": root, "data": data, "checkpoint": find_latest(run)}


def _no_output(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())


def test_missing_extractor(setup, stand_in_full, tmp_path, capsys):
    out = tmp_path / "run"
    items = tiny_overrides(setup["data"], tmp_path / "absent.onnx", out)
    assert_one_line_error(*run_train(capsys, items), "absent.onnx", "not found")
    _no_output(out)


def test_feature_tensor_not_in_the_graph(setup, stand_in_full, tmp_path, capsys):
    out = tmp_path / "run"
    items = tiny_overrides(setup["data"], stand_in_full, out)
    assert_one_line_error(*run_train(capsys, items, "--feature-tensor", "/model.99/Nope_output_0"), "/model.99/Nope_output_0")
    _no_output(out)


def test_empty_train_set(setup, stand_in_full, tmp_path, capsys):
    src = json.loads((setup["data"] / "annotations" / "instances_train2017_person_only_no_crowd.json").read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**src, "annotations": []}))
    out = tmp_path / "run"
    items = tiny_overrides(setup["data"], stand_in_full, out)
    assert_one_line_error(*run_train(capsys, items, "--train-ann", str(empty)), "empty.json", "no image")
    _no_output(out)


def test_empty_val_set(setup, stand_in_full, tmp_path, capsys):
    src = json.loads((setup["data"] / "annotations" / "instances_val2017_person_only_no_crowd.json").read_text())
    empty = tmp_path / "empty_val.json"
    empty.write_text(json.dumps({**src, "images": [], "annotations": []}))
    out = tmp_path / "run"
    items = tiny_overrides(setup["data"], stand_in_full, out)
    assert_one_line_error(*run_train(capsys, items, "--val-ann", str(empty)), "empty_val.json")
    _no_output(out)


def test_val_images_missing(setup, stand_in_full, tmp_path, capsys):
    images = tmp_path / "val_images"
    shutil.copytree(setup["data"] / "images" / "val2017", images)
    victim = sorted(images.iterdir())[-1]
    victim.unlink()
    out = tmp_path / "run"
    items = tiny_overrides(setup["data"], stand_in_full, out)
    assert_one_line_error(*run_train(capsys, items, "--val-images", str(images)), victim.name, "not on disk")
    _no_output(out)


def test_unwritable_output_folder(setup, stand_in_full, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    items = tiny_overrides(setup["data"], stand_in_full, blocker / "run")
    assert_one_line_error(*run_train(capsys, items), "a_file")


def test_unknown_config_key(setup, stand_in_full, tmp_path, capsys):
    items = tiny_overrides(setup["data"], stand_in_full, tmp_path / "run")
    assert_one_line_error(*run_train(capsys, items, "--set", "optim.lr_typo=1"), "optim.lr_typo")


def test_corrupt_checkpoint(setup, tmp_path, capsys):
    bad = tmp_path / "checkpoint_epoch_0001_128x128_0000.pth"
    data = setup["checkpoint"].read_bytes()
    bad.write_bytes(data[: len(data) // 2])  # a truncated file, as a crash without atomic writes would leave
    assert_one_line_error(main(["train", "--resume", str(bad)]), capsys.readouterr().err, bad.name, "corrupt")


def test_resume_without_checkpoint(tmp_path, capsys):
    code = main(["train", "--resume", "--out", str(tmp_path)])
    assert_one_line_error(code, capsys.readouterr().err, str(tmp_path), "no checkpoint")


def test_checkpoint_of_other_channel_count(setup, tmp_path, capsys):
    from roiseg.synthetic.detector import build_stand_in_detector

    other = build_stand_in_detector(tmp_path / "wide.onnx", channels=48, input_hw=(128, 128), mode="full")
    code = main(["train", "--resume", str(setup["checkpoint"]), "--extractor", str(other), "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, setup["checkpoint"].name, "32 feature channels", "has 48")


def test_checkpoint_of_other_extractor_file(setup, stand_in_featext, tmp_path, capsys):
    # same channel count and input size, different detector file
    code = main(["train", "--resume", str(setup["checkpoint"]), "--extractor", str(stand_in_featext),
                 "--out", str(tmp_path / "o")])
    assert_one_line_error(code, capsys.readouterr().err, setup["checkpoint"].name, "sha256")
