"""A failed write never leaves a file that looks finished, and its error names the user's file.

A full disk is made for real: the command runs in its own process under a file-size limit
(RLIMIT_FSIZE, with SIGXFSZ ignored), so every write past the limit fails with EFBIG the way
a full disk fails with ENOSPC, in ITK's and safetensors' own code. Where mounting is allowed,
a tiny tmpfs is a second, truly full disk.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import blob_case, geometry_for
from tests.test_cli import SEED_16, assert_user_error, invoke
from voxseg.data.io import read_image, write_image
from voxseg.errors import OutputExistsError, VoxsegError

ROOT = Path(__file__).resolve().parents[1]

LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["voxseg", *sys.argv[2:]]
from voxseg.cli import main
main()
"""

pytestmark = pytest.mark.slow


def _voxseg(limit: int, *args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-c", LIMITED, str(limit), *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=600,
    )


def _one_error_line(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert ".part" not in errors[0], errors[0]
    return errors[0]


def _leftovers(folder: Path) -> list[Path]:
    """Temporary files or folders, and empty files: nothing that looks like an output."""
    return [
        p for p in folder.rglob("*") if ".part" in p.name or (p.is_file() and p.stat().st_size == 0)
    ]


# ---- predict a folder onto a full disk -------------------------------------------------------


@pytest.mark.parametrize("limit", [64, 150])
def test_predict_a_folder_onto_a_full_disk(tmp_path: Path, run: Path, limit: int):
    """Masks are ~160 bytes compressed: the first one is cut off, and nothing is left."""
    data = run.parent / "kits"
    out = tmp_path / "masks"
    result = _voxseg(limit, "predict", "--model", run, "--input", data, "--output", out)
    _one_error_line(result, str(out / "case_00000.nii.gz"), "File too large", "ulimit")
    assert "wrote" not in result.stdout
    assert not out.exists() or list(out.iterdir()) == []
    # and the next run, with room, writes every mask (nothing is taken for finished)
    again = invoke("predict", "--model", run, "--input", data, "--output", out)
    assert again.exit_code == 0, again.output
    assert sorted(p.name for p in out.iterdir()) == [f"case_{i:05d}.nii.gz" for i in range(3)]


def test_predict_to_an_uncompressed_file_onto_a_full_disk(tmp_path: Path, run: Path):
    """A `.nii` mask is 7.7 KB: it is cut off after 4 KB."""
    scan = run.parent / "kits" / "case_00000" / "imaging.nii.gz"
    out = tmp_path / "mask.nii"
    result = _voxseg(4096, "predict", "--model", run, "--input", scan, "--output", out)
    _one_error_line(result, str(out), "File too large")
    assert list(tmp_path.iterdir()) == []


# ---- train: the checkpoint write fails -------------------------------------------------------


def test_train_checkpoint_write_onto_a_full_disk(tmp_path: Path, run: Path):
    """The JSON files fit under the limit, the weights do not: one line naming a checkpoint
    file of the run folder, and no partial or temporary checkpoint left."""
    data, cache = run.parent / "kits", run.parent / "cache"  # cached arrays: no big writes
    weights = (run / "last.safetensors").stat().st_size
    assert weights > 8192, "the seed model's weights are expected to outgrow the limit"
    out = tmp_path / "run"
    result = _voxseg(8192, "train", "--data", data, "--out", out, *SEED_16, "--cache", cache)
    line = _one_error_line(result, str(out), ".safetensors", "File too large")
    assert "internal error" not in line
    assert _leftovers(tmp_path) == []
    for checkpoint in out.glob("*.safetensors"):
        assert checkpoint.stat().st_size > 8192, checkpoint  # only complete files


# ---- the library calls directly, under the same limit ----------------------------------------

WRITE = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
from pathlib import Path
import numpy as np
from voxseg.errors import VoxsegError
path = Path(sys.argv[1])
try:
    if sys.argv[2] == "text":
        from voxseg.atomic import write_text
        write_text(path, "x" * 10_000)
    elif sys.argv[2] == "tensors":
        import torch
        from voxseg.weights import save_tensors
        save_tensors(path, {"w": torch.zeros(10_000)})
    else:
        from voxseg.data.io import write_image
        from voxseg.geometry import Geometry
        g = Geometry((20, 30, 40), (2.0, 1.0, 0.5), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        noise = np.random.default_rng(0).integers(0, 1000, g.shape).astype(np.int16)
        write_image(path, noise, g)
except VoxsegError as exc:
    print(exc)
    sys.exit(2)
"""


@pytest.mark.parametrize(
    "name, kind",
    [
        ("notes.json", "text"),
        ("last.safetensors", "tensors"),
        ("scan.nii.gz", "image"),
        ("scan.nii", "image"),
        ("scan.nrrd", "image"),
        ("scan.mha", "image"),
        ("scan.mhd", "image"),
        ("scan.nhdr", "image"),
    ],
)
def test_every_writer_reports_a_full_disk_naming_the_final_file(tmp_path, name, kind):
    path = tmp_path / "out" / name
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", WRITE, str(path), kind],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    message = result.stdout.strip()
    assert message.startswith(f"{path}: cannot write (") and "\n" not in message, message
    assert "File too large" in message and ".part" not in message
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mhd"])
def test_a_write_that_fails_silently_is_caught_by_reading_back(tmp_path, monkeypatch, suffix):
    """ITK does not always raise when a write fails: it may leave a cut-off or empty file.
    Reading the temporary file back catches it before it takes the final name."""
    write = sitk.WriteImage

    def cut_off(image, path, *args, **kwargs):
        write(image, path, *args, **kwargs)
        written = max(Path(path).parent.iterdir(), key=lambda p: p.stat().st_size)
        written.write_bytes(written.read_bytes()[: written.stat().st_size // 2])

    monkeypatch.setattr(sitk, "WriteImage", cut_off)
    image, _ = blob_case()
    path = tmp_path / "out" / f"mask{suffix}"
    with pytest.raises(VoxsegError) as info:
        write_image(path, image, geometry_for(image.shape))
    message = str(info.value)
    assert message.startswith(f"{path}: cannot write (") and ".part" not in message
    assert list((tmp_path / "out").iterdir()) == []


def test_an_empty_file_is_never_taken_for_a_mask(tmp_path, monkeypatch):
    monkeypatch.setattr(sitk, "WriteImage", lambda image, path, *a, **k: Path(path).touch())
    image, _ = blob_case()
    with pytest.raises(VoxsegError, match="mask.nii.gz: cannot write"):
        write_image(tmp_path / "mask.nii.gz", image, geometry_for(image.shape))
    assert list(tmp_path.iterdir()) == []


# ---- a real full (or read-only) disk, where mounting is allowed ------------------------------


@contextlib.contextmanager
def _tmpfs(folder: Path, options: str):
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def test_predict_onto_a_full_tmpfs(tmp_path: Path, run: Path):
    data = run.parent / "kits"
    with _tmpfs(tmp_path / "disk", "size=8k") as disk:
        (disk / "filler").write_bytes(b"\0" * 4096)  # what is left is less than one page
        with contextlib.suppress(OSError):
            (disk / "filler2").write_bytes(b"\0" * 4096)
        out = disk / "masks"
        result = invoke("predict", "--model", run, "--input", data, "--output", out)
        assert_user_error(result, str(out / "case_00000.nii.gz"))
        assert ".part" not in result.stderr
        assert not out.exists() or list(out.iterdir()) == []


def test_train_onto_a_full_tmpfs(tmp_path: Path, run: Path):
    """64 KB hold the JSON files, not the 4 MB of weights."""
    data, cache = run.parent / "kits", run.parent / "cache"
    with _tmpfs(tmp_path / "disk", "size=64k") as disk:
        out = disk / "run"
        result = invoke("train", "--data", data, "--out", out, *SEED_16, "--cache", cache)
        assert_user_error(result, str(out), ".safetensors", "No space left on device")
        assert ".part" not in result.stderr
        assert _leftovers(disk) == [] and list(out.glob("*.safetensors")) == []


def test_a_read_only_disk_is_named_by_the_users_path(tmp_path: Path, run: Path):
    data, pred = run.parent / "kits", tmp_path / "pred"
    assert invoke("predict", "--model", run, "--input", data, "--output", pred).exit_code == 0
    with _tmpfs(tmp_path / "ro", "ro,size=64k") as disk:
        for out, args in (
            (disk / "m.json", ("evaluate", "--pred", pred, "--gt", data)),
            (disk / "report.html", ("report", run)),
            (disk / "masks", ("predict", "--model", run, "--input", data)),
        ):
            option = "--output" if args[0] == "predict" else "--out"
            result = invoke(*args, option, out)
            assert_user_error(result, str(out), "Read-only file system", "write elsewhere")
            assert ".part" not in result.stderr


# ---- an output folder that cannot be written -------------------------------------------------


def test_an_output_under_a_file_is_named_by_the_users_path(tmp_path: Path, run: Path):
    """Tests run as root, so a folder without write permission cannot be made; a path whose
    parent is a file fails the same way, in the same code."""
    blocker = tmp_path / "results"
    blocker.write_text("a file, not a folder", encoding="utf-8")
    pred = tmp_path / "pred"
    data = run.parent / "kits"
    assert invoke("predict", "--model", run, "--input", data, "--output", pred).exit_code == 0
    for out, args in (
        (blocker / "m.json", ("evaluate", "--pred", pred, "--gt", data)),
        (blocker / "deeper" / "m.json", ("evaluate", "--pred", pred, "--gt", data)),
        (blocker / "report.html", ("report", run)),
        (blocker / "mask.nii.gz", ("predict", "--model", run, "--input", data / "case_00000")),
    ):
        option = "--output" if args[0] == "predict" else "--out"
        result = invoke(*args, option, out)
        assert_user_error(result, str(out), f"({blocker} is a file, not a folder)")
        assert ".part" not in result.stderr
    assert blocker.read_text(encoding="utf-8") == "a file, not a folder"


# ---- header + data file formats ---------------------------------------------------------------


def _data_file(header: Path) -> Path:
    """The data file named inside a .mhd or .nhdr header."""
    for line in header.read_text(encoding="latin-1").splitlines():
        key, _, value = line.partition("=" if header.suffix == ".mhd" else ":")
        if key.strip().lower() in ("elementdatafile", "data file", "datafile"):
            return header.with_name(value.strip())
    raise AssertionError(f"no data file named in {header}")


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
@pytest.mark.parametrize("compress", [True, False])
def test_two_file_outputs_name_their_final_data_file(tmp_path: Path, suffix: str, compress):
    image, _ = blob_case()
    g = geometry_for(image.shape)
    path = write_image(tmp_path / "out" / f"m{suffix}", image, g, compress=compress)
    data = _data_file(path)
    assert data.is_file() and not data.name.startswith(".") and ".part" not in data.name
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, data.name])
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in path.parent.glob("m.*"):
        shutil.copy(p, copy / p.name)
    for where in (path, copy / path.name):
        back, bg = read_image(where)
        np.testing.assert_array_equal(back, image)
        assert bg.same_grid(g, atol=1e-5)


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_predict_to_a_two_file_format_then_copy_it(tmp_path: Path, run: Path, suffix: str):
    scan = run.parent / "kits" / "case_00000" / "imaging.nii.gz"
    out = tmp_path / "out" / f"m{suffix}"
    result = invoke("predict", "--model", run, "--input", scan, "--output", out)
    assert result.exit_code == 0, result.output
    copy = tmp_path / "copy"
    copy.mkdir()
    names = [p.name for p in out.parent.iterdir()]
    assert len(names) == 2 and not any(n.startswith(".") for n in names), names
    for name in names:
        shutil.copy(out.parent / name, copy / name)
    mask, geometry = read_image(copy / out.name)
    assert set(np.unique(mask)) <= {0, 1}
    assert geometry.same_grid(read_image(scan)[1])


def test_a_data_file_of_the_users_is_not_replaced(tmp_path: Path):
    image, _ = blob_case()
    g = geometry_for(image.shape)
    first = write_image(tmp_path / "a" / "m.mhd", image, g)
    data = _data_file(first)
    mine = tmp_path / data.name
    mine.write_bytes(b"my own data")
    with pytest.raises(OutputExistsError, match=data.name):
        write_image(tmp_path / "m.mhd", image, g)
    assert mine.read_bytes() == b"my own data"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a", data.name])
    write_image(tmp_path / "m.mhd", image, g, overwrite=True)
    np.testing.assert_array_equal(read_image(tmp_path / "m.mhd")[0], image)
