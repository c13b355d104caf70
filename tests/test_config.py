"""config.py is the single, validated source of truth: a bad value is one line naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import assert_user_error, invoke
from voxseg.config import RunConfig
from voxseg.errors import ConfigError

VALID = RunConfig().override({"preprocess.spacing": (2.0, 1.5, 1.5), "train.patch_size": (16,) * 3})

BAD_FIELDS = [
    ("train", "optimizer", "sgdd"),
    ("train", "precision", "fp8"),
    ("train", "schedule", "linear"),
    ("train", "loss", "focal"),
    ("model", "name", "resnet"),
    ("preprocess", "mode", "crop"),
    ("preprocess", "spacing", [0, 1, 1]),
    ("preprocess", "spacing", [-1.0, 1, 1]),
    ("preprocess", "spacing", [1, 1]),
    ("preprocess", "shape", [64, "a", 64]),
    ("train", "patch_size", [32, 32, 0]),
    ("train", "patch_size", [32.5, 32, 32]),
    ("train", "batch_size", 0),
    ("train", "batch_size", True),
    ("train", "lr", -0.1),
    ("train", "max_minutes", 0),
    ("train", "val_fraction", 1.0),
    ("infer", "overlap", 1.5),
    ("infer", "window", [16, 16, -16]),
    ("preprocess", "hu_window", [300, -100]),
    ("data", "foreground", [0]),
    ("train", "num_workers", 4),
]


def _write(path: Path, section: str, name: str, value) -> Path:
    d = VALID.to_dict()
    d[section][name] = value
    path.write_text(json.dumps(d), encoding="utf-8")
    return path


@pytest.mark.parametrize(("section", "name", "value"), BAD_FIELDS)
def test_load_refuses_a_bad_field_naming_file_and_field(tmp_path: Path, section, name, value):
    path = _write(tmp_path / "config.json", section, name, value)
    with pytest.raises(ConfigError) as err:
        RunConfig.load(path)
    message = str(err.value)
    assert str(path) in message and f"{section}.{name}" in message and "\n" not in message


def test_round_trip_and_version_1_upgrade(tmp_path: Path):
    path = tmp_path / "config.json"
    VALID.save(path)
    assert RunConfig.load(path) == VALID
    old = VALID.to_dict()
    old["version"] = 1
    old["train"]["num_workers"] = 0
    del old["infer"]["window"]
    path.write_text(json.dumps(old), encoding="utf-8")
    assert RunConfig.load(path).infer.window == (16, 16, 16)  # v1 borrowed the training patch


def test_version_3_hu_window_is_read(tmp_path: Path):
    """Configs up to version 3 named the HU window `preprocess.window`."""
    old = VALID.to_dict()
    old["version"] = 3
    old["preprocess"]["window"] = old["preprocess"].pop("hu_window")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old), encoding="utf-8")
    assert RunConfig.load(path) == VALID
    old["version"] = 4  # the current version has no such field
    path.write_text(json.dumps(old), encoding="utf-8")
    with pytest.raises(ConfigError, match='"preprocess.window"'):
        RunConfig.load(path)


def test_overrides_are_typed_and_checked_against_the_fields():
    c = VALID.override({"train.lr": 3e-4, "train.val_cases": ["a", "b"]})
    assert c.train.lr == 3e-4 and c.train.val_cases == ("a", "b")
    with pytest.raises(ConfigError, match="unknown setting 'train.nope'"):
        VALID.override({"train.nope": 1})
    with pytest.raises(ConfigError, match="^--batch-size -2: must be > 0$"):
        VALID.override({"train.batch_size": -2})


@pytest.mark.parametrize(("section", "name", "value"), [BAD_FIELDS[0], BAD_FIELDS[1]])
def test_predict_and_resume_refuse_a_hand_edited_config(
    tmp_path: Path, kits_tiny: Path, section, name, value
):
    run = tmp_path / "run"
    run.mkdir()
    _write(run / "config.json", section, name, value)
    (run / "state.json").write_text("{}", encoding="utf-8")
    predict = invoke("predict", "--model", run, "--input", kits_tiny, "--output", tmp_path / "o")
    assert_user_error(predict, f"{section}.{name}", str(run / "config.json"))
    resume = invoke("train", "--data", kits_tiny, "--out", run, "--resume")
    assert_user_error(resume, f"{section}.{name}", str(run / "config.json"))


@pytest.mark.parametrize(
    "args",
    [
        ("--shape", "-8", "32", "32"),
        ("--shape", "0", "0", "0"),
        ("--spacing", "0", "0", "0"),
        ("--spacing", "-1", "1", "1"),
        ("--max-minutes", "0"),
        ("--model", "nope"),
        ("--optimizer", "sgdd"),
    ],
)
def test_train_checks_numbers_before_any_work(tmp_path: Path, kits_tiny: Path, args):
    out = tmp_path / "run"
    result = invoke("train", "--data", kits_tiny, "--out", out, *args, "--cache", tmp_path / "c")
    assert_user_error(result, args[0])
    assert not (tmp_path / "c").exists() and not out.exists()  # nothing prepared or written


@pytest.mark.parametrize(
    ("name", "needle"),
    [("cuda:7", "CUDA"), ("mps", "MPS"), ("tpu", "--device"), ("x!", "--device")],
)
def test_an_unusable_device_is_one_line(name, needle):
    import torch

    from voxseg.runtime import resolve_device

    if torch.cuda.is_available() or torch.backends.mps.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=needle) as err:
        resolve_device(name)
    assert "\n" not in str(err.value)
