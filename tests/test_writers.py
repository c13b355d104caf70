"""One writer per run folder, outputs never mixed, nothing a user had replaced (issue 25's
rule), and what an nnU-Net user's first hour expects of outputs and logs (issue 26)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import blob_case, geometry_for, write_case
from voxseg.cli import app
from voxseg.data.io import read_image, write_image
from voxseg.run_folder import RunFolder, writer_of, writing

SEED_16 = ("--model", "seed", "--shape", "16", "16", "16", "--epochs", "1")


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error:"), result.stderr
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def _snapshot(folder: Path) -> dict[str, bytes]:
    """The user-visible files (the lock of a command at work is not one)."""
    files = sorted(folder.iterdir())
    return {p.name: p.read_bytes() for p in files if p.is_file() and p.name != ".voxseg.lock"}


# ---- a run folder has one writer at a time -------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "resume", "export"])
def test_a_second_writer_is_refused_and_changes_nothing(tmp_path: Path, run: Path, command):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = _snapshot(copy)
    with writing(RunFolder(copy), "train"):  # a first command still at work
        assert writer_of(RunFolder(copy)).startswith("voxseg train (pid ")
        data = run.parent / "kits"
        if command == "export":
            result = invoke("export", copy, "--overwrite")
        else:
            extra = ("--resume",) if command == "resume" else ("--overwrite", *SEED_16)
            result = invoke("train", "--data", data, "--out", copy, *extra)
        one_line_error(result, str(copy), "voxseg train (pid", "is writing this run folder")
        assert _snapshot(copy) == before
    assert writer_of(RunFolder(copy)) is None  # released with the first command


def test_predict_says_a_run_is_still_training(tmp_path: Path, run: Path, kits_tiny: Path):
    scan = kits_tiny / "case_00000" / "imaging.nii.gz"
    fresh = RunFolder(tmp_path / "fresh")
    with writing(fresh, "train"):  # before its first epoch: no model to predict with
        shutil.copy(run / "config.json", fresh.config_path)
        result = invoke("predict", "--model", fresh.root, "-i", scan, "-o", tmp_path / "a.nii.gz")
        one_line_error(result, "still writing this run", "no model yet")
    copy = RunFolder(tmp_path / "copy")
    shutil.copytree(run, copy.root)
    with writing(copy, "train"):  # mid-training: the best weights so far, and it says so
        result = invoke("predict", "--model", copy.root, "-i", scan, "-o", tmp_path / "b.nii.gz")
        assert result.exit_code == 0, result.output
        assert "still writing this run" in result.stderr
    result = invoke("predict", "--model", copy.root, "-i", scan, "-o", tmp_path / "c.nii.gz")
    assert result.exit_code == 0 and "still writing" not in result.stderr


def test_a_failed_start_leaves_no_folder(tmp_path: Path, kits_tiny: Path):
    out = tmp_path / "new_run"
    result = invoke("train", "--data", kits_tiny, "--out", out, *SEED_16, "--foreground", "7")
    one_line_error(result, "no training label has a voxel")
    assert not out.exists()
    kept = tmp_path / "mine"  # a folder the user made is theirs: left in place
    kept.mkdir()
    result = invoke("train", "--data", kits_tiny, "--out", kept, *SEED_16, "--foreground", "7")
    assert result.exit_code == 2 and kept.is_dir()


def test_export_never_replaces_another_runs_config(tmp_path: Path, run: Path):
    other = tmp_path / "other_run"
    shutil.copytree(run, other)
    before = _snapshot(other)
    for extra in ((), ("--overwrite",)):  # even --overwrite: its config belongs to its weights
        one_line_error(invoke("export", run, "--out", other, *extra), "holds another trained run")
    assert _snapshot(other) == before
    alone = tmp_path / "alone"  # a folder holding only someone's config.json
    alone.mkdir()
    (alone / "config.json").write_text('{"mine": true}', encoding="utf-8")
    one_line_error(invoke("export", run, "--out", alone), "config.json", "--overwrite")
    assert (alone / "config.json").read_text(encoding="utf-8") == '{"mine": true}'
    assert not (alone / "model.onnx").exists()


# ---- outputs named as nnU-Net names them; one scan into one file ---------------------------------
def test_nnunet_images_ts_predictions_are_named_by_case(tmp_path: Path, run: Path):
    images, labels = tmp_path / "imagesTs", tmp_path / "labelsTs"
    for i in range(2):
        image, label = blob_case(seed=i)
        g = geometry_for(image.shape)
        write_image(images / f"case_{i:04d}_0000.nii.gz", image, g)
        write_image(labels / f"case_{i:04d}.nii.gz", label, g)
    out = tmp_path / "pred"
    assert invoke("predict", "--model", run, "-i", images, "-o", out).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["case_0000.nii.gz", "case_0001.nii.gz"]
    result = invoke("evaluate", "--pred", out, "--gt", labels)
    assert result.exit_code == 0, result.output
    page = tmp_path / "report.html"  # the CT under the overlays comes from imagesTs
    assert invoke("report", "--pred", out, "--gt", labels, "--out", page).exit_code == 0
    assert "no CT image" not in page.read_text(encoding="utf-8")
    (images / "case_0001_0000.nii.gz").unlink()  # and a missing one is said
    page.unlink()
    assert invoke("report", "--pred", out, "--gt", labels, "--out", page).exit_code == 0
    assert page.read_text(encoding="utf-8").count("no CT image") == 1
    missing = invoke("evaluate", "--pred", out, "--gt", tmp_path / "other")
    assert missing.exit_code == 2
    write_image(tmp_path / "other" / "case_0009.nii.gz", label, g)
    line = one_line_error(invoke("evaluate", "--pred", out, "--gt", tmp_path / "other"))
    assert "looked for case_0009" in line and "found cases: case_0000, case_0001" in line


@pytest.mark.parametrize("source", ["kits case folder", "dicom series"])
def test_one_scan_into_a_file_name_writes_that_file(tmp_path: Path, run: Path, source):
    image, label = blob_case(seed=0)
    g = geometry_for(image.shape)
    if source == "kits case folder":
        scan = write_case(tmp_path / "case_00000", image, label, g)
    else:
        from tests.test_dicom_seg import _write_series

        scan = _write_series(tmp_path / "series", "axial_names_shuffled")
        image = read_image(scan)[0]
    out = tmp_path / "mask.nii.gz"
    result = invoke("predict", "--model", run, "-i", scan, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and "wrote 1 mask to" in result.stdout
    assert read_image(out)[0].shape == image.shape


def test_epochs_are_logged_as_plain_lines_off_a_terminal(tmp_path: Path, kits_tiny: Path):
    args = ("--model", "seed", "--shape", "16", "16", "16", "--epochs", "2")
    result = invoke("train", "--data", kits_tiny, "--out", tmp_path / "r", *args)
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("epoch ")]
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1", "epoch 2"], result.stderr
    assert all("loss" in ln and "val Dice" in ln and "elapsed" in ln for ln in lines)
    assert "\x1b[" not in result.stderr  # no terminal control codes in a log file


# ---- no writer replaces an input, --overwrite or not ---------------------------------------------
def _msd(root: Path) -> Path:
    """An nnU-Net raw dataset: imagesTr, labelsTr, dataset.json."""
    for i in range(2):
        image, label = blob_case(seed=i)
        g = geometry_for(image.shape)
        write_image(root / "imagesTr" / f"case_{i:04d}_0000.nii.gz", image, g)
        write_image(root / "labelsTr" / f"case_{i:04d}.nii.gz", label, g)
    (root / "dataset.json").write_text(
        '{"labels": {"background": 0, "kidney": 1, "tumor": 2}, "file_ending": ".nii.gz"}',
        encoding="utf-8",
    )
    return root


@pytest.mark.parametrize("target", ["dataset.json", "labelsTr/case_0000.nii.gz", "prediction"])
def test_evaluate_and_report_never_write_over_what_they_read(tmp_path: Path, target):
    data = _msd(tmp_path / "Dataset001")
    pred = tmp_path / "pred"
    for i in range(2):
        label, g = read_image(data / "labelsTr" / f"case_{i:04d}.nii.gz")
        write_image(pred / f"case_{i:04d}.nii.gz", (label > 0).astype("uint8"), g)
    out = pred / "case_0001.nii.gz" if target == "prediction" else data / target
    before = out.read_bytes()
    commands = ("evaluate", "report") if out.suffix == ".json" else ("report",)
    for command in commands:  # evaluate writes .json (and .csv) only
        result = invoke(command, "--pred", pred, "--gt", data, "--out", out, "--overwrite")
        one_line_error(result, "would replace the input")
        assert out.read_bytes() == before
    assert invoke("evaluate", "--pred", pred, "--gt", data, "--out", data / "m.json").exit_code == 0


def test_synth_never_paints_over_its_label_maps(tmp_path: Path):
    labels = tmp_path / "labels"
    image, label = blob_case(seed=0)
    write_case(labels / "case_00000", image, label, geometry_for(image.shape))
    before = _snapshot(labels / "case_00000")
    args = ("--cases", "1", "--labels", labels, "--overwrite")
    one_line_error(invoke("synth", "--out", labels, *args), "would replace the input")
    assert _snapshot(labels / "case_00000") == before


# ---- an output another process created meanwhile is never replaced -------------------------------
def test_exclusive_write_keeps_what_another_process_wrote(tmp_path: Path):
    from voxseg.atomic import AppearedMeanwhile, atomic_path

    target = tmp_path / "out.txt"
    with (
        pytest.raises(AppearedMeanwhile, match="another process wrote it"),
        atomic_path(target, exclusive=True) as tmp,
    ):
        tmp.write_text("mine", encoding="utf-8")
        target.write_text("theirs", encoding="utf-8")  # the other writer finishes first
    assert target.read_text(encoding="utf-8") == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]  # no temporary left


def test_two_predictions_into_one_folder_never_mix(tmp_path: Path, run: Path, monkeypatch):
    """The second writer of a case stops with one line; the first one's mask is kept."""
    from voxseg.prediction import Predictor

    data = run.parent / "kits"
    out = tmp_path / "pred"
    real = Predictor.probabilities
    theirs = {}

    def racing(self, net_input, infer):
        if not theirs:  # another `voxseg predict` writes case_00000 while this one works
            image, geometry = read_image(data / "case_00000" / "segmentation.nii.gz")
            write_image(out / "case_00000.nii.gz", image, geometry)
            theirs["bytes"] = (out / "case_00000.nii.gz").read_bytes()
        return real(self, net_input, infer)

    monkeypatch.setattr(Predictor, "probabilities", racing)
    result = invoke("predict", "--model", run, "-i", data, "-o", out)
    one_line_error(result, "case_00000.nii.gz", "another process wrote it")
    assert (out / "case_00000.nii.gz").read_bytes() == theirs["bytes"]


def test_cache_is_shown_and_cleared_without_touching_other_files(tmp_path: Path, kits_tiny: Path):
    cache = tmp_path / "cache"
    args = ("--model", "seed", "--shape", "16", "16", "16", "--epochs", "1", "--cache", cache)
    assert invoke("train", "--data", kits_tiny, "--out", tmp_path / "r", *args).exit_code == 0
    (cache / "notes.txt").write_text("mine", encoding="utf-8")  # the user's, never deleted
    shown = invoke("cache", "--cache", cache)
    assert shown.exit_code == 0 and "holds 3 cached cases" in shown.stdout
    cleared = invoke("cache", "--cache", cache, "--clear")
    assert cleared.exit_code == 0 and "deleted 3 cached cases" in cleared.stdout
    assert [p.name for p in cache.iterdir()] == ["notes.txt"]


# ---- weights and graphs that cannot be right are refused when loaded -----------------------------
@pytest.mark.parametrize("damage", ["nan", "inf", "int32"])
def test_weights_that_cannot_be_right_are_refused(tmp_path: Path, run: Path, damage):
    import torch
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for name in ("state.json", "state.prev.json"):  # no checksum covers the file
        (copy / name).unlink(missing_ok=True)
    tensors = load_file(copy / "model.safetensors")
    name = sorted(tensors)[0]
    if damage == "int32":
        tensors[name] = tensors[name].to(torch.int32)
    else:
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float(damage)
    save_file(tensors, copy / "model.safetensors")
    scan = run.parent / "kits" / "case_00000" / "imaging.nii.gz"
    result = invoke("predict", "--model", copy, "-i", scan, "-o", tmp_path / "m.nii.gz")
    one_line_error(result, "model.safetensors", repr(name))
    assert not (tmp_path / "m.nii.gz").exists()


def test_an_onnx_graph_beside_another_networks_config_is_refused(tmp_path: Path, run: Path):
    from tests.test_prediction import _run_dir

    deploy = tmp_path / "deploy"
    assert invoke("export", run, "--out", deploy).exit_code == 0  # the seed network
    unet = _run_dir(tmp_path, "spacing")
    shutil.copy(deploy / "model.onnx", unet / "model.onnx")
    scan = run.parent / "kits" / "case_00000" / "imaging.nii.gz"
    args = ("-i", scan, "-o", tmp_path / "m.nii.gz", "--engine", "onnx")
    one_line_error(invoke("predict", "--model", unet, *args), "another network")


@pytest.mark.parametrize("divisor", ["not json", "[0, 0, 0]", "[8, 8]"])
def test_bad_divisor_metadata_is_one_line(tmp_path: Path, run: Path, divisor):
    import onnx

    deploy = tmp_path / "deploy"
    assert invoke("export", run, "--out", deploy).exit_code == 0
    proto = onnx.load(deploy / "model.onnx")
    for prop in proto.metadata_props:
        if prop.key == "voxseg.divisor":
            prop.value = divisor
    onnx.save(proto, deploy / "model.onnx")
    scan = run.parent / "kits" / "case_00000" / "imaging.nii.gz"
    args = ("-i", scan, "-o", tmp_path / "m.nii.gz", "--engine", "onnx")
    one_line_error(invoke("predict", "--model", deploy, *args), "voxseg.divisor")


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("epoch", "1", "\"epoch\" = '1': must be a whole number"),
        ("epoch", 50, "does not match the 1 epochs of its history"),
        ("elapsed", -3.0, '"elapsed" = -3.0'),
        ("best_epoch", 7, "later than the epochs completed"),
        ("files", {"last.safetensors": 3}, '"files"'),
    ],
)
def test_a_hand_edited_state_is_refused_on_resume(tmp_path: Path, run: Path, field, value, needle):
    import json

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for name in ("state.json", "state.prev.json"):
        path = copy / name
        if path.exists():
            state = json.loads(path.read_text(encoding="utf-8"))
            state[field] = value
            path.write_text(json.dumps(state), encoding="utf-8")
    before = _snapshot(copy)
    result = invoke("train", "--data", run.parent / "kits", "--out", copy, "--resume")
    one_line_error(result, "state", needle)
    assert _snapshot(copy) == before


# ---- nnU-Net's dataset.json regions are the default target ---------------------------------------
def test_dataset_json_regions_are_read_and_trained(tmp_path: Path):
    import json

    from voxseg.data import discover

    data = _msd(tmp_path / "Dataset002")
    (data / "dataset.json").write_text(
        json.dumps(
            {
                "labels": {"background": 0, "kidney": [1, 2], "tumor": 2},
                "regions_class_order": [1, 2],
                "file_ending": ".nii.gz",
                "channel_names": {"0": "CT"},
            }
        ),
        encoding="utf-8",
    )
    dataset = discover(data)
    assert [(r.name, r.labels) for r in dataset.regions] == [("kidney", (1, 2)), ("tumor", (2,))]
    assert dataset.label_names == {0: "background", 1: "kidney", 2: "tumor"}
    info = invoke("info", data)
    assert "1 kidney, 2 tumor" in " ".join(info.stdout.split())
    out = tmp_path / "run"
    args = ("--epochs", "1", "--steps-per-epoch", "1", "--val-fraction", "0.5")
    result = invoke("train", "--data", data, "--out", out, *args)
    assert result.exit_code == 0, result.output
    assert "dataset.json declares regions" in result.stderr + result.stdout
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["data"]["region_names"] == ["kidney", "tumor"]
    assert config["data"]["regions"] == [[1, 2], [2]]


def test_a_file_ending_that_matches_nothing_names_dataset_json(tmp_path: Path):
    data = _msd(tmp_path / "Dataset003")
    (data / "dataset.json").write_text('{"file_ending": ".nrrd"}', encoding="utf-8")
    one_line_error(invoke("info", data), "dataset.json", "file_ending '.nrrd'")


def test_an_uncompressed_kits_label_is_read(tmp_path: Path):
    from voxseg.data import discover

    image, label = blob_case(seed=0)
    case = write_case(tmp_path / "kits" / "case_00000", image, label, geometry_for(image.shape),
                      label_name="segmentation.nii")  # fmt: skip
    [found] = discover(tmp_path / "kits").cases
    assert found.label == case / "segmentation.nii"
    assert discover(tmp_path / "kits").layout == "kits19"
