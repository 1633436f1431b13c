"""A full disk names the file being written, and a command with several outputs writes all or none."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

import pytest

from roiseg.errors import InputError
from roiseg.utils.atomic import write_all, write_json

Usage = namedtuple("Usage", "total used free")


def _full(path):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_names_the_file_and_leaves_nothing(tmp_path):
    with pytest.raises(InputError, match=r"^no space left on device writing .*b\.json$"):
        write_all({tmp_path / "a.json": lambda p: p.write_text("{}"), tmp_path / "b.json": _full,
                   tmp_path / "c.png": lambda p: p.write_bytes(b"png")})
    assert list(tmp_path.iterdir()) == []  # a.json was complete, yet it is not left alone


def test_write_all_renames_every_output_when_all_succeed(tmp_path):
    paths = write_all({tmp_path / "a.json": lambda p: p.write_text("{}"), tmp_path / "sub" / "b.md": lambda p: p.write_text("# b")})
    assert [p.read_text() for p in paths] == ["{}", "# b"] and sorted(f.name for f in tmp_path.iterdir()) == ["a.json", "sub"]


def test_another_write_error_is_not_called_a_full_disk(tmp_path):
    def broken(path):
        raise OSError(errno.EIO, "Input/output error")

    with pytest.raises(OSError, match="Input/output"):
        write_all({tmp_path / "a.json": broken})


def test_a_checkpoint_on_a_full_disk_names_the_file(tmp_path, monkeypatch):
    import torch

    from roiseg.training.checkpoint import save_checkpoint

    def torch_save(obj, f):  # what torch.save says when the disk fills up under it
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", torch_save)
    state = {"epoch": 1, "head_config": {}, "model": {}, "extractor": {}}
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**9, 10**9, 1024))
    with pytest.raises(InputError, match=r"no space left on device writing .*best\.pth"):
        save_checkpoint(tmp_path / "best.pth", state)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10**12, 10**9, 10**11))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # plenty of space: the library's own error stays
        save_checkpoint(tmp_path / "best.pth", state)
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "ok.json", {"a": 1})
    assert (tmp_path / "ok.json").is_file()


def test_evaluate_outputs_are_all_or_none(tmp_path, monkeypatch):
    from pathlib import Path

    from roiseg.evaluation.report import write_outputs

    real = Path.write_text

    def write_text(self, text, *args, **kwargs):
        if self.name.startswith(".r.md."):  # the Markdown's temporary file: the disk fills up there
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    report = {"protocol": "roiseg-roi", "annotations": "a.json", "images_dir": "img", "num_rois": 0,
              "figures": {}, "mask_ap": {}}
    monkeypatch.setattr("roiseg.evaluation.report.format_markdown", lambda r: "# md")
    with pytest.raises(InputError, match=r"no space left on device writing .*r\.md$"):
        write_outputs(report, [], tmp_path / "r.json", tmp_path / "r.md")
    assert list(tmp_path.iterdir()) == []  # the JSON was written in full, and is not left without its Markdown
