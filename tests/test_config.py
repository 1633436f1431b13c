"""The training config: defaults == configs/default.toml, precedence, --set parsing, clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from conftest import SHARED

from roiseg.errors import InputError
from roiseg.training.config import TrainConfig, load_config
from roiseg.utils.overrides import parse_set, read_toml

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[1] / "configs" / "default.toml"


def test_default_toml_lists_every_option_with_its_default():
    toml = read_toml(DEFAULT_CONFIG_PATH)
    defaults = TrainConfig().to_dict()
    assert set(toml) == set(defaults)
    for section, values in defaults.items():
        assert set(toml[section]) == set(values), section
        for key, value in values.items():
            assert toml[section][key] == value, f"{section}.{key}"


def test_precedence_defaults_then_file_then_overrides(tmp_path: Path):
    f = tmp_path / "c.toml"
    f.write_text('[optim]\nlr = 0.5\nweight_decay = 0.2\n[train]\nepochs = 7\n')
    cfg = load_config(f, {"optim.lr": 0.25})
    assert cfg.optim.lr == 0.25  # override wins over the file
    assert cfg.optim.weight_decay == 0.2  # file wins over the default
    assert cfg.train.epochs == 7
    assert cfg.optim.grad_clip == TrainConfig().optim.grad_clip  # untouched key keeps its default


def test_base_config_sits_below_file_and_overrides(tmp_path: Path):
    base = TrainConfig().to_dict()
    base["train"]["epochs"] = 3
    base["head"]["variant"] = "baseline"
    f = tmp_path / "c.toml"
    f.write_text("[train]\nepochs = 5\n")
    cfg = load_config(f, {"train.seed": 9}, base=base)
    assert (cfg.train.epochs, cfg.head.variant, cfg.train.seed) == (5, "baseline", 9)


def test_set_values_are_parsed_as_toml():
    items = parse_set(["loss.dice_classes=[1, 2]", "optim.amp=false", "train.device=cuda:1", "optim.lr=3e-4",
                       'features.cache="none"'])
    assert items == {"loss.dice_classes": [1, 2], "optim.amp": False, "train.device": "cuda:1", "optim.lr": 3e-4,
                     "features.cache": "none"}
    cfg = load_config(None, items)
    assert cfg.loss.dice_classes == (1, 2) and cfg.optim.amp is False and cfg.features.cache_dir is None


def test_round_trip_through_dict():
    cfg = load_config(None, ["loss.class_weights=[0.5, 1.5, 2.0]", "head.variant=baseline", "data.jitter=0.1"])
    again = TrainConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert again.loss.class_weights == [0.5, 1.5, 2.0]


def test_seed_layout_paths_follow_the_data_root():
    cfg = load_config(None, {"data.root": "/d"})
    assert cfg.data.train_annotations == Path("/d/annotations/instances_train2017_person_only_no_crowd.json")
    assert cfg.data.val_annotations == Path("/d/annotations/instances_val2017_person_only_no_crowd.json")
    assert cfg.data.train_image_dir == Path("/d/images/train2017")
    assert cfg.data.val_image_dir == Path("/d/images/val2017")
    explicit = load_config(None, {"data.root": "/d", "data.val_ann": "/x/v.json"})
    assert explicit.data.val_annotations == Path("/x/v.json")


@pytest.mark.parametrize(
    "items, words",
    [
        ({"optim.lrr": 1.0}, ["optim.lrr", "unknown"]),
        ({"nosection.x": 1}, ["nosection"]),
        ({"train.epochs": "many"}, ["train.epochs", "integer"]),
        ({"train.epochs": 0}, ["train.epochs", ">= 1"]),
        ({"optim.amp": 1}, ["optim.amp", "true or false"]),
        ({"head.variant": "huge"}, ["huge"]),
        ({"head.variant": "detail", "head.mask_size": 30}, ["mask_size"]),
        ({"loss.class_weights": [1.0, 2.0]}, ["class_weights"]),
        ({"optim.amp_dtype": "fp8"}, ["optim.amp_dtype"]),
    ],
)
def test_bad_values_name_the_key(items, words):
    with pytest.raises(InputError) as err:
        load_config(None, items)
    for w in words:
        assert w in str(err.value)


def test_set_without_equals_or_section_is_an_error():
    for bad in ("optim.lr", "lr=3"):
        with pytest.raises(InputError, match="section.key=value"):
            parse_set([bad])


def test_invalid_toml_names_the_file(tmp_path: Path):
    f = tmp_path / "broken.toml"
    f.write_text("[optim\nlr = 1\n")
    with pytest.raises(InputError, match="broken.toml"):
        load_config(f)
    with pytest.raises(InputError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_cli_flags_become_overrides_and_win_over_set():
    from roiseg.cli import build_parser
    from roiseg.commands import train as cmd

    parser = build_parser("train")  # the config flags are added when train is the command
    args = parser.parse_args(["train", "--set", "optim.lr=0.1", "--set", "train.keep=3", "--lr", "0.2",
                              "--feature-tensor", "input.663", "--cache", "none", "--variant", "baseline"])
    items = cmd.overrides_from_args(args)
    assert items["optim.lr"] == 0.2 and items["train.keep"] == 3
    cfg = load_config(None, items)
    assert (cfg.features.feature_tensor, cfg.features.cache_dir, cfg.head.variant) == ("input.663", None, "baseline")
    assert "train.epochs" not in items  # flags not given do not override the config file


def test_legacy_key_features_tensor_is_read_as_feature_tensor(tmp_path: Path):
    f = tmp_path / "old.toml"
    f.write_text('[features]\ntensor = "input.663"\n')
    assert load_config(f).features.feature_tensor == "input.663"
    old_checkpoint_config = TrainConfig().to_dict()
    old_checkpoint_config["features"] = {"extractor": "det.onnx", "tensor": "/model.20/Concat_output_0", "cache": "none"}
    cfg = load_config(None, None, base=old_checkpoint_config)
    assert (cfg.features.feature_tensor, cfg.features.extractor) == ("/model.20/Concat_output_0", "det.onnx")
    assert TrainConfig.from_dict(old_checkpoint_config) == cfg
    assert "tensor" not in cfg.to_dict()["features"]  # written back under the current name only


def test_head_section_has_every_head_config_field_but_the_extractor_ones():
    import dataclasses

    from roiseg.modeling import HeadConfig

    keys = set(TrainConfig().to_dict()["head"])
    fixed = {"in_channels", "stride", "input_hw"} | set(HeadConfig.EXTRACTOR_FIELDS)
    assert keys == {f.name for f in dataclasses.fields(HeadConfig)} - fixed
    assert all(getattr(TrainConfig().head, k) == HeadConfig.__dataclass_fields__[k].default for k in keys)


def test_the_parser_adds_the_config_flags_only_for_train():
    from roiseg.cli import build_parser

    with pytest.raises(SystemExit):  # another command on the line: train's flags (torch) are not built
        build_parser("predict").parse_args(["train", "--lr", "0.2"])
    assert build_parser("train").parse_args(["train", "--lr", "0.2"]).__dict__["optim.lr"] == 0.2


def test_every_flag_names_a_config_key_and_only_given_flags_override():
    from roiseg.commands import train as cmd
    from roiseg.utils.overrides import flag_fields

    flags = {f.flag: f.dotted for f in flag_fields(TrainConfig)}
    assert flags["--feature-tensor"] == "features.feature_tensor" and flags["--data-root"] == "data.root"
    assert flags["--out"] == "train.out" and flags["--variant"] == "head.variant" and flags["--cache"] == "features.cache"
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cmd.add_parser(sub)
    cmd.add_details(sub.choices["train"])
    assert cmd.overrides_from_args(parser.parse_args(["train"])) == {}
    args = parser.parse_args(["train", "--data-root", "/d", "--batch-size", "3", "--out", "o", "--resume", "--config", "c.toml"])
    assert cmd.overrides_from_args(args) == {"data.root": "/d", "data.batch_size": 3, "train.out": "o"}
    assert (args.resume, args.config) == ("", Path("c.toml"))
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--variant", "huge"])


def test_detector_preprocessing_is_configurable():
    from roiseg.conventions import Preprocessing
    from roiseg.training.build import build_extractor
    from roiseg.training.distributed import DistContext

    cfg = load_config(None, {"features.color": "bgr", "features.scale": 1.0})
    assert cfg.features.preprocessing == Preprocessing(color="bgr", scale=1.0)
    with pytest.raises(InputError, match="features.color"):
        load_config(None, {"features.color": "yuv"})
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    cfg = load_config(None, {"features.extractor": str(SHARED / "extractors" / "yolox_nano.onnx"),
                             "features.feature_tensor": "input.663", "features.color": "bgr", "features.scale": 1.0,
                             "head.variant": "detail"})
    ext = build_extractor(cfg, ctx)
    assert Preprocessing.from_json(ext.info.preprocessing) == Preprocessing(color="bgr", scale=1.0)
