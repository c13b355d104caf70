"""Reliability, round 2, through the CLI: nothing the user has is overwritten, inputs never are,
a target that is not in the data is an error, layouts are not guessed wrong, resume never mixes
runs, numbers are checked before work, and errors are one line."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import blob_case, geometry_for, write_case
from tests.test_cli import SEED_16, assert_user_error, invoke
from voxseg.data.io import read_image, write_image


def _scans(folder: Path, names: list[str]) -> Path:
    image, _ = blob_case()
    for name in names:
        write_image(folder / name, image, geometry_for(image.shape))
    return folder


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- 1. nothing the user has is overwritten without --overwrite ------------------------------


def test_demo_refuses_a_folder_that_holds_data(tmp_path: Path):
    out = tmp_path / "k"
    _scans(out / "data" / "case_00000", ["imaging.nii.gz"])
    (out / "metrics.json").write_text("{}", encoding="utf-8")
    before = _snapshot(out)
    assert_user_error(invoke("demo", "--out", out), "--overwrite")
    assert _snapshot(out) == before


@pytest.mark.parametrize("existing", ["m.json", "m.csv"])
def test_evaluate_never_replaces_either_output(tmp_path: Path, run: Path, existing: str):
    gt = run.parent / "kits"
    pred = tmp_path / "pred"
    assert invoke("predict", "--model", run, "--input", gt, "--output", pred).exit_code == 0
    (tmp_path / existing).write_text("mine", encoding="utf-8")
    assert_user_error(
        invoke("evaluate", "--pred", pred, "--gt", gt, "--out", tmp_path / "m.json"), existing
    )
    assert (tmp_path / existing).read_text(encoding="utf-8") == "mine"
    assert_user_error(
        invoke("evaluate", "--pred", pred, "--gt", gt, "--out", tmp_path / "x.csv"), ".json"
    )


@pytest.mark.parametrize("names", [["a.nii.gz", "a.nii"], ["b.nrrd", "b.mha"]])
def test_two_scans_with_one_case_id_are_refused(tmp_path: Path, run: Path, names):
    scans = _scans(tmp_path / "scans", names)
    result = invoke("predict", "--model", run, "--input", scans, "--output", tmp_path / "o")
    assert_user_error(result, names[0], names[1])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd"])
def test_probabilities_never_replace_the_mask(tmp_path: Path, run: Path, suffix: str):
    scan = _scans(tmp_path, ["scan.nii.gz"]) / "scan.nii.gz"
    out = tmp_path / f"m{suffix}"
    result = invoke("predict", "--model", run, "--input", scan, "--output", out, "--probabilities")
    assert result.exit_code == 0, result.output
    mask, _ = read_image(out)
    prob, _ = read_image(tmp_path / f"m_prob{suffix}")
    assert mask.dtype == np.uint8 and prob.dtype == np.float32


# ---- 2. inputs are never overwritten, even with --overwrite -----------------------------------


@pytest.mark.parametrize("single", [True, False])
def test_inputs_are_never_overwritten(tmp_path: Path, run: Path, single: bool):
    scans = _scans(tmp_path / "scans", ["a.nii.gz", "b.nii.gz"])
    target = scans / "a.nii.gz" if single else scans
    before = _snapshot(scans)
    result = invoke("predict", "--model", run, "--input", target, "--output", target, "--overwrite")
    assert_user_error(result, "input")
    assert _snapshot(scans) == before


# ---- 5. a target that is not in the data is an error, not a perfect score ----------------------


@pytest.mark.parametrize("foreground", ["7", "-1", "0", "1,0"])
def test_train_refuses_a_target_absent_from_the_labels(tmp_path: Path, run: Path, foreground):
    data = run.parent / "kits"
    result = invoke(
        "train", "--data", data, "--out", tmp_path / "r", *SEED_16, "--foreground", foreground
    )
    assert_user_error(result, "foreground")
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_train_refuses_all_zero_labels(tmp_path: Path):
    image, label = blob_case()
    for i in range(3):
        write_case(tmp_path / "d" / f"case_{i:05d}", image, 0 * label, geometry_for(image.shape))
    result = invoke("train", "--data", tmp_path / "d", "--out", tmp_path / "r", *SEED_16)
    assert_user_error(result, "no training label")


def test_evaluate_refuses_a_target_absent_from_the_ground_truth(tmp_path: Path, run: Path):
    gt = run.parent / "kits"
    pred = tmp_path / "pred"
    assert invoke("predict", "--model", run, "--input", gt, "--output", pred).exit_code == 0
    assert_user_error(invoke("evaluate", "--pred", pred, "--gt", gt, "--foreground", "7"), "7")


def test_report_scores_the_target_the_run_learned(tmp_path: Path):
    data = tmp_path / "kits"
    for i in range(3):
        image, label = blob_case(seed=i)
        write_case(data / f"case_{i:05d}", image, label, geometry_for(image.shape))
    run = tmp_path / "run"
    args = ("--data", data, "--out", run, *SEED_16, "--foreground", "2")
    assert invoke("train", *args).exit_code == 0
    pred = tmp_path / "pred"
    for case in (data / f"case_{i:05d}" for i in range(3)):  # the tumour itself as prediction
        label, g = read_image(case / "segmentation.nii.gz")
        write_image(pred / f"{case.name}.nii.gz", (label == 2).astype(np.uint8), g)
    report = tmp_path / "r.html"
    assert invoke("report", run, "--pred", pred, "--gt", data, "--out", report).exit_code == 0
    assert "global Dice 1.0000" in report.read_text("utf-8")


# ---- 6. --val-fraction 0 leaves a model and says so ------------------------------------------


def test_no_validation_still_leaves_a_model(tmp_path: Path, run: Path):
    out = tmp_path / "r"
    args = ("--data", run.parent / "kits", "--out", out, *SEED_16, "--val-fraction", "0")
    result = invoke("train", *args)
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and "no validation" in result.stdout


# ---- 8. dataset layouts are not guessed wrong -----------------------------------------------


def test_msd_ids_with_four_digits_are_cases_not_channels(tmp_path: Path, run: Path):
    names = ["patient_0001.nii.gz", "patient_0002.nii.gz", "patient_0003.nii.gz"]
    root = tmp_path / "msd"
    _scans(root / "imagesTs", names)
    out = tmp_path / "o"
    assert invoke("predict", "--model", run, "--input", root, "--output", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == names


def test_a_kits_case_folder_predicts_its_scan_only(tmp_path: Path, run: Path):
    case = run.parent / "kits" / "case_00001"
    out = tmp_path / "o"
    assert invoke("predict", "--model", run, "--input", case, "--output", out).exit_code == 0
    assert [p.name for p in out.iterdir()] == ["case_00001.nii.gz"]


def test_multi_channel_msd_is_refused(tmp_path: Path, run: Path):
    root = tmp_path / "msd"
    _scans(root / "imagesTs", ["p_0000.nii.gz", "p_0001.nii.gz"])
    result = invoke("predict", "--model", run, "--input", root, "--output", tmp_path / "o")
    assert_user_error(result, "2 channels")


# ---- 9. --resume never mixes runs silently ----------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--lr", "0.5"),
        ("--model", "unet"),
        ("--optimizer", "sgd"),
        # Planning options: the resumed run keeps its plan, so they would be silently lost.
        ("--width", "16"),
        ("--deep-supervision", None),
        ("--isotropic", None),
        ("--sample-dice", None),  # a boolean field named by its flag, not "--batch-dice False"
    ],
)
def test_resume_refuses_settings_that_cannot_change(tmp_path: Path, run: Path, option, value):
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    before = (copy / "config.json").read_text(encoding="utf-8")
    given = [option] if value is None else [option, value]
    result = invoke("train", "--data", run.parent / "kits", "--out", copy, "--resume", *given)
    assert_user_error(result, option, "resumed run")
    assert (copy / "config.json").read_text(encoding="utf-8") == before


def test_resume_refuses_another_dataset(tmp_path: Path, run: Path):
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    other = tmp_path / "other"
    for i in range(3):
        image, label = blob_case(seed=i)
        write_case(other / f"case_{i + 10:05d}", image, label, geometry_for(image.shape))
    result = invoke("train", "--data", other, "--out", copy, "--resume")
    assert_user_error(result, "not the dataset")


def test_resume_may_extend_the_epochs_and_says_so(tmp_path: Path, run: Path):
    copy = tmp_path / "run"
    copy.mkdir()
    for f in run.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    result = invoke(
        "train", "--data", run.parent / "kits", "--out", copy, "--resume", "--epochs", "2"
    )
    assert result.exit_code == 0, result.output
    assert "train.epochs = 2" in result.stderr
    assert json.loads((copy / "config.json").read_text(encoding="utf-8"))["train"]["epochs"] == 2


# ---- 10. numbers from the user are validated before any work -----------------------------------


def test_validation_on_every_case_is_refused_before_reading(tmp_path: Path, run: Path):
    data = run.parent / "kits"
    ids = "case_00000,case_00001,case_00002"
    result = invoke("train", "--data", data, "--out", tmp_path / "r", *SEED_16, "--val-cases", ids)
    assert_user_error(result, "--val-cases")
    assert not (tmp_path / "r" / "config.json").exists()


@pytest.mark.parametrize("value", ["lots", "-3", "0", "nan"])
def test_a_bad_memory_limit_is_one_line(tmp_path: Path, run: Path, monkeypatch, value):
    monkeypatch.setenv("VOXSEG_MEMORY_LIMIT_GB", value)
    result = invoke("train", "--data", run.parent / "kits", "--out", tmp_path / "r", *SEED_16)
    assert_user_error(result, "VOXSEG_MEMORY_LIMIT_GB")


# ---- 12. one line means one line ------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("train", "--epochs", "zero"), ("predict",), ("evaluate", "--pred"), ("nonsense",)],
)
def test_usage_errors_are_one_line_with_a_hint(args):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "voxseg", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "--help" in lines[0], lines


# ---- 13. outputs get the usual file mode -------------------------------------------------------


def test_masks_and_weights_get_the_usual_mode(tmp_path: Path, run: Path):
    mask = tmp_path / "m.nii.gz"
    scan = run.parent / "kits" / "case_00000" / "imaging.nii.gz"
    assert invoke("predict", "--model", run, "--input", scan, "--output", mask).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    expected = 0o666 & ~umask
    for path in (mask, run / "model.safetensors", run / "last.safetensors", run / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


# ---- 3. a damaged file is never read as data ---------------------------------------------------


def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
@pytest.mark.parametrize("command", ["predict", "train", "evaluate"])
def test_a_truncated_file_is_refused_everywhere(tmp_path: Path, run: Path, command, fraction):
    data = tmp_path / "kits"
    for i in range(3):
        image, label = blob_case(seed=i)
        write_case(data / f"case_{i:05d}", image, label, geometry_for(image.shape))
    if command == "predict":
        bad = data / "case_00001" / "imaging.nii.gz"
        _cut(bad, fraction)
        result = invoke("predict", "--model", run, "--input", data, "--output", tmp_path / "o")
    elif command == "train":
        bad = data / "case_00001" / "segmentation.nii.gz"
        _cut(bad, fraction)
        result = invoke("train", "--data", data, "--out", tmp_path / "r", *SEED_16)
    else:
        pred = tmp_path / "pred"
        assert invoke("predict", "--model", run, "--input", data, "--output", pred).exit_code == 0
        bad = pred / "case_00001.nii.gz"
        _cut(bad, fraction)
        result = invoke("evaluate", "--pred", pred, "--gt", data)
    assert_user_error(result, str(bad))


def test_a_half_written_mask_is_redone_on_a_rerun(tmp_path: Path, run: Path):
    data = run.parent / "kits"
    out = tmp_path / "o"
    assert invoke("predict", "--model", run, "--input", data, "--output", out).exit_code == 0
    whole, _ = read_image(out / "case_00001.nii.gz")
    _cut(out / "case_00001.nii.gz", 0.9)
    result = invoke("predict", "--model", run, "--input", data, "--output", out)
    assert result.exit_code == 0 and "2 outputs already existed" in result.stderr
    np.testing.assert_array_equal(read_image(out / "case_00001.nii.gz")[0], whole)


def test_the_run_carries_a_model_card(run: Path):
    import torch

    import voxseg

    card = json.loads((run / "config.json").read_text(encoding="utf-8"))["card"]
    assert card["train_cases"] + card["val_cases"] == 3 and card["target"]
    assert (
        card["voxseg_version"] == voxseg.__version__ and card["torch_version"] == torch.__version__
    )
    assert card["command"].startswith("voxseg") and card["median_spacing"]
    shown = " ".join(invoke("info", run).output.split())
    assert "train cases" in shown and "torch version" in shown
    assert json.loads(invoke("info", run, "--json").stdout)["model_card"] == card


def test_safetensors_starting_with_0x80_is_not_a_pickle(tmp_path: Path):
    """About 1 in 32 safetensors files has a header length whose first byte is 0x80."""
    import pickle

    import torch

    from voxseg.weights import is_pickle, load_tensors, save_tensors

    for n in range(1, 400):
        path = tmp_path / "w.safetensors"
        save_tensors(path, {"x" * n: torch.zeros(1)})
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.fail("no header length starting with 0x80 found")
    assert list(load_tensors(path)) == ["x" * n]
    assert is_pickle(pickle.dumps({"a": 1}, protocol=4))
    assert is_pickle(b"PK\x03\x04" + b"\0" * 8)


def test_train_out_an_existing_file_is_one_line(tmp_path: Path, run: Path):
    out = tmp_path / "notes.txt"
    out.write_text("mine", encoding="utf-8")
    result = invoke("train", "--data", run.parent / "kits", "--out", out, *SEED_16)
    assert_user_error(result, str(out), "is a file")
    assert out.read_text(encoding="utf-8") == "mine"


@pytest.mark.slow
def test_resume_keeps_the_grid_a_budget_planned(tmp_path: Path):
    """A short budget coarsens the planned grid; --data-grid on --resume would silently keep
    it, so it is refused (and a plain --resume continues)."""
    out, data = tmp_path / "budget", tmp_path / "kits"
    for i in range(3):  # 32 x 48 x 48: 3 cases do not fit 20 times into 0.01 minutes
        image, label = blob_case((32, 48, 48), seed=i)
        write_case(data / f"case_{i:05d}", image, label, geometry_for(image.shape))
    args = ["train", "--data", data, "--out", out, "--cache", tmp_path / "c"]
    result = invoke(*args, "--max-minutes", "0.01")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    record = json.loads((out / "fingerprint.json").read_text(encoding="utf-8"))
    median = np.median(record["fingerprint"]["spacings"], axis=0)
    assert np.any(np.asarray(saved["preprocess"]["spacing"]) > median * 1.05)  # coarsened
    before = (out / "config.json").read_text(encoding="utf-8")
    result = invoke(*args, "--resume", "--data-grid")
    assert_user_error(result, "--data-grid", "resumed run keeps its grid")
    assert (out / "config.json").read_text(encoding="utf-8") == before
