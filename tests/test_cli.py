"""Every user error through the CLI: exit 2, one line naming the file and the fix, no traceback."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from tests.conftest import blob_case, geometry_for, write_case
from voxseg.cli import app
from voxseg.data import discover
from voxseg.data.io import write_image

runner = CliRunner()
SEED_16 = ("--model", "seed", "--shape", "16", "16", "16", "--epochs", "1")
"""A training run small enough that only the input checks matter."""


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], (
        result.stderr
    )  # progress lines may precede it
    for needle in needles:
        assert needle in errors[0], (needle, result.stderr)


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for cmd in ("synth", "info", "summary", "train", "predict", "evaluate", "report", "demo"):
        assert cmd in result.output


def test_info_reports_cases(kits_tiny: Path):
    result = invoke("info", kits_tiny)
    assert result.exit_code == 0, result.output
    assert "4 cases (3 labelled, 1 unlabelled)" in " ".join(result.output.split())
    assert "IPL" in result.output


def test_info_json(kits_tiny: Path):
    import json

    result = invoke("info", kits_tiny, "--json")
    data = json.loads(result.stdout)
    assert data["cases"] == 4 and data["layout"] == "kits19"
    assert data["rows"][0]["label_values"] == [0, 1, 2]


def _corrupt(root: Path, kind: str) -> Path:
    """Break one case of a valid KiTS folder; returns the file that is broken."""
    case = root / "case_00001"
    img, seg = case / "imaging.nii.gz", case / "segmentation.nii.gz"
    image, label = blob_case(seed=1)
    g = geometry_for(image.shape)
    if kind == "random_bytes":
        img.write_bytes(np.random.default_rng(0).bytes(2000))
        return img
    if kind == "truncated_gzip":
        img.write_bytes(img.read_bytes()[:100])
        return img
    if kind == "short_data":
        raw = gzip.decompress(img.read_bytes())
        img.write_bytes(gzip.compress(raw[:-500]))
        return img
    if kind == "image_2d":
        img.unlink()
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(img))
        return img
    if kind == "image_4d":
        img.unlink()
        nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), np.int16), np.eye(4)), img)
        return img
    if kind == "nan":
        img.unlink()
        a = image.astype(np.float32)
        a[2, 3, 4] = np.nan
        nib.save(nib.Nifti1Image(a, np.eye(4)), img)
        return img
    if kind == "shape_mismatch":
        seg.unlink()
        write_image(seg, label[:-2], geometry_for(label[:-2].shape))
        return seg
    if kind == "spacing_mismatch":
        seg.unlink()
        write_image(seg, label, geometry_for(label.shape, spacing=(5.0, 1.2, 0.8)))
        return seg
    if kind == "label_values":
        seg.unlink()
        write_image(seg, np.random.default_rng(0).integers(0, 300, label.shape).astype(np.int64), g)
        return seg
    if kind == "unreadable":
        img.chmod(0)
        return img
    raise ValueError(kind)


BAD = [
    "random_bytes",
    "truncated_gzip",
    "short_data",
    "image_2d",
    "image_4d",
    "shape_mismatch",
    "spacing_mismatch",
    "label_values",
    "unreadable",
]


@pytest.mark.parametrize("kind", BAD)
def test_info_on_a_broken_case(kits_tiny: Path, kind: str):
    import os

    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads files regardless of permissions")
    bad = _corrupt(kits_tiny, kind)
    assert_user_error(invoke("info", kits_tiny), str(bad))


@pytest.mark.parametrize("kind", [*BAD, "nan"])
def test_train_on_a_broken_case(tmp_path: Path, kits_tiny: Path, kind: str):
    """Training reads every voxel, so NaN/inf is caught too; nothing is left in the run folder."""
    import os

    if kind == "unreadable" and os.geteuid() == 0:
        pytest.skip("root reads files regardless of permissions")
    bad = _corrupt(kits_tiny, kind)
    run = tmp_path / "run"
    result = invoke(
        "train",
        "--data",
        kits_tiny,
        "--out",
        run,
        *SEED_16,
        "--cache",
        tmp_path / "cache",
    )
    assert_user_error(result, str(bad))
    assert not (run / "model.safetensors").exists()


def test_missing_and_empty_folders(tmp_path: Path):
    assert_user_error(invoke("info", tmp_path / "nope"), "no such file")
    (tmp_path / "empty").mkdir()
    assert_user_error(invoke("info", tmp_path / "empty"), "no cases found")


def test_synth_refuses_to_overwrite(tmp_path: Path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    assert_user_error(
        invoke("synth", "--out", out, "--cases", "1", "--shape", "16", "16", "16"), "--overwrite"
    )
    assert (out / "keep.txt").read_text(encoding="utf-8") == "mine"


def test_train_refuses_existing_run_and_bad_names(tmp_path: Path, kits_tiny: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}", encoding="utf-8")
    (run / "state.json").write_text("{}", encoding="utf-8")
    assert_user_error(invoke("train", "--data", kits_tiny, "--out", run), "--overwrite")
    assert (run / "config.json").read_text(encoding="utf-8") == "{}"
    assert_user_error(
        invoke("train", "--data", kits_tiny, "--out", tmp_path / "r2", "--model", "nope"),
        "seed",
        "unet",
    )
    assert_user_error(invoke("summary", "--model", "nope"), "valid names")


def test_predict_refuses_pickled_weights(tmp_path: Path, kits_tiny: Path):
    import torch

    from voxseg.config import RunConfig

    run = tmp_path / "run"
    run.mkdir()
    RunConfig().override({"preprocess.spacing": (1.0, 1.0, 1.0)}).save(run / "config.json")
    torch.save({"x": torch.zeros(1)}, run / "model.safetensors")
    assert_user_error(
        invoke("predict", "--model", run, "--input", kits_tiny, "--output", tmp_path / "o"),
        "pickle",
    )


def test_evaluate_mismatched_grid(tmp_path: Path):
    image, label = blob_case()
    write_case(tmp_path / "gt" / "case_00000", image, label, geometry_for(image.shape))
    write_image(
        tmp_path / "pred" / "case_00000.nii.gz", label, geometry_for(label.shape, spacing=(1, 1, 1))
    )
    assert_user_error(
        invoke("evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt"), "case_00000"
    )


def test_debug_shows_the_traceback(tmp_path: Path):
    """--debug lets the user's error through with its traceback (and nothing else breaks on
    the way out); without it the same error is one line."""
    import subprocess
    import sys

    def run(*args):
        cmd = [sys.executable, "-m", "voxseg", *args, "info", str(tmp_path / "nope")]
        return subprocess.run(cmd, capture_output=True, text=True, check=False)

    debug, plain = run("--debug"), run()
    assert debug.returncode not in (0, 2)
    assert "Traceback" in debug.stderr and "InputError" in debug.stderr, debug.stderr
    assert "During handling" not in debug.stderr, debug.stderr  # the handler did not crash
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().splitlines()[-1].startswith("error:")


def test_absurd_volume_is_refused_before_allocating(tmp_path: Path, kits_tiny: Path, monkeypatch):
    monkeypatch.setenv("VOXSEG_MEMORY_LIMIT_GB", "0.000001")
    result = invoke(
        "train",
        "--data",
        kits_tiny,
        "--out",
        tmp_path / "run",
        *SEED_16,
        "--cache",
        tmp_path / "c",
    )
    assert_user_error(result, "VOXSEG_MEMORY_LIMIT_GB", "imaging.nii.gz")


@pytest.mark.parametrize("kind", ["5d", "zero_axis"])
def test_odd_dimensions(tmp_path: Path, kind: str):
    path = tmp_path / "case_00000" / "imaging.nii.gz"
    path.parent.mkdir()
    shape = (4, 5, 6, 1, 2) if kind == "5d" else (4, 0, 6)
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), path)
    assert_user_error(invoke("info", tmp_path), str(path))


def test_label_dtype_int64_with_255(tmp_path: Path):
    image, label = blob_case()
    label = label.astype(np.int64)
    label[0, 0, 0] = 255
    write_case(tmp_path / "case_00000", image, label, geometry_for(image.shape))
    result = invoke("info", tmp_path)
    assert_user_error(result, "segmentation.nii.gz", "255", "--foreground")
    ok = invoke("info", tmp_path, "--foreground", "1,2")
    assert ok.exit_code == 0, ok.output


def test_info_prints_shape_and_spacing_in_the_order_train_takes(kits_tiny: Path):
    import json

    from voxseg.config import PreprocessConfig
    from voxseg.regions import NON_ZERO
    from voxseg.train.prepared import prepare_case

    row = json.loads(invoke("info", kits_tiny, "--json").stdout)["rows"][0]
    # conftest's files: array (16, 20, 24) at (2.5, 1.2, 0.8) mm, direction I,P,L.
    assert row["shape"] == [24, 20, 16] and row["spacing"] == pytest.approx([0.8, 1.2, 2.5])
    # Resampling to the spacing info printed is the identity: same order as --spacing.
    case = discover(kits_tiny).labelled[0]
    cfg = PreprocessConfig(spacing=tuple(row["spacing"]), crop_body=False)
    assert prepare_case(case, cfg, NON_ZERO).image.shape == tuple(row["shape"])
    table = " ".join(invoke("info", kits_tiny).output.split())
    assert "24x20x16" in table and "z y x" in table


def test_info_on_a_real_kits19_header(tmp_path: Path):
    from tests.conftest import kits_dir
    from voxseg.data.discovery import Case
    from voxseg.data.inspect import inspect_case

    label = kits_dir(tmp_path) / "case_00000" / "segmentation.nii.gz"
    info = inspect_case(Case("case_00000", label, None))
    # KiTS19 case 0: 611 slices of 0.5 mm, 512 x 512 at 0.92 mm (README of shared/data).
    assert info.shape == (611, 512, 512) and info.orientation == "IPL"
    assert info.spacing[0] == pytest.approx(0.5) and info.spacing[1] == pytest.approx(
        0.9199, abs=1e-3
    )


# ---- the CLI declares no ranges or choices of its own; help reads plainly --------------------
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--val-fraction", "1"), "--val-fraction 1.0: must be in [0, 1)"),
        (("--lr", "0"), "--lr 0.0: must be > 0"),
        (("--batch-size", "0"), "--batch-size 0: must be > 0"),
        (("--optimizer", "sgdd"), "--optimizer 'sgdd': choose one of adam, adamw, sgd"),
        (("--patience", "-1"), "--patience -1: must be >= 0"),
    ],
)
def test_train_ranges_are_the_configs(tmp_path: Path, kits_tiny: Path, args, message):
    result = invoke("train", "--data", kits_tiny, "--out", tmp_path / "run", *SEED_16, *args)
    assert_user_error(result, message)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_train_options_each_set_a_field():
    """Every option of `voxseg train` that is not a run control sets a config field."""
    import dataclasses
    import inspect

    from voxseg.cli.train import train
    from voxseg.config import TRAIN_OPTIONS, RunConfig

    controls = {"data", "out", "preset", "resume", "overwrite", "device", "cache", "width"}
    controls |= {"deep_supervision", "anisotropic", "budget_grid", "nproc", "region_spec"}
    params = set(inspect.signature(train).parameters)
    assert params - controls == set(TRAIN_OPTIONS)
    for key in TRAIN_OPTIONS.values():  # each names a real field
        section, _, name = key.partition(".")
        assert name in {f.name for f in dataclasses.fields(getattr(RunConfig(), section))}, key


def test_predict_overlap_range_is_the_configs(tmp_path: Path, run: Path, kits_tiny: Path):
    scan = kits_tiny / "case_00000" / "imaging.nii.gz"
    result = invoke("predict", "--model", run, "-i", scan, "-o", tmp_path / "m.nii.gz",
                    "--overlap", "1.2")  # fmt: skip
    assert_user_error(result, "--overlap 1.2: must be in [0, 1)")


def test_predict_choices_are_predictions_types():
    from typing import get_args

    from voxseg.cli import predict as cli_predict
    from voxseg.prediction import Engine, OutputFormat

    assert "|".join(get_args(Engine)) == cli_predict._ENGINES
    assert "|".join(get_args(OutputFormat)) == cli_predict._FORMATS
    result = invoke("predict", "--model", "m", "-i", "x", "-o", "y", "--engine", "onnxx")
    assert_user_error(result, "--engine 'onnxx': choose one of auto, torch, onnx")


def test_version_and_plain_help():
    from typing import get_args

    from voxseg import __version__
    from voxseg.cli.train_options import Lr
    from voxseg.train.plan import PLANNED_LR

    assert f"{PLANNED_LR:g} planned for the U-Net" in get_args(Lr)[1].help

    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"voxseg {__version__}"
    for command in ("", "synth", "info", "summary", "train", "predict", "export", "evaluate",
                    "report", "demo", "cache"):  # fmt: skip
        text = invoke(*command.split(), "--help").output
        usage = next(line for line in text.splitlines() if "Usage:" in line)
        assert "<bool>" not in text and "{" not in usage, (command, text)
        assert "..." not in text.replace("[ARGS]...", ""), (command, text)


def test_a_closed_pipe_ends_quietly(kits_tiny: Path):
    """`voxseg info --json | head`: the reader leaves early; no error, no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "voxseg", "info", "--json", str(kits_tiny)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # before voxseg writes: its first write meets a closed pipe
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert stderr == "", stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("predict", "-d", "1"), "-d is nnU-Net's dataset id; voxseg takes the dataset folder"),
        (("predict", "--disable_tta"), "test-time augmentation is off unless `--tta`"),
        (("train", "--fast"), "train on a coarser `--spacing`"),
        (("predict", "--model", "a", "--model", "b", "-i", "x"), "--model is given twice"),
        (("predict", "--model=a", "--model", "b", "-i", "x"), "--model is given twice"),
    ],
)
def test_habits_from_other_tools_get_a_pointer(args, needle):
    assert_user_error(invoke(*args), needle)
