"""Geometry is never silently changed: a header ITK would read differently from other tools,
or a DICOM series with a gap, is refused with one line; every valid header still reads, and a
mask written for it carries the input's own affine.

Bad headers are built with nibabel (the tool whose reading ITK would contradict); tiny volumes.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import blob_case, kits_dir
from tests.test_cli import SEED_16, assert_user_error, invoke
from voxseg.data import nifti
from voxseg.data.io import read_image, read_info, write_image
from voxseg.errors import InputError

SHAPE = (12, 14, 16)  # nibabel (x, y, z) order
ZOOMS = (0.8, 1.2, 2.5)


@pytest.fixture(autouse=True)
def _fresh_cache():
    nifti._scan.cache_clear()
    yield
    nifti._scan.cache_clear()


def _affine(degrees: float = 20.0, origin=(-40.0, 25.0, 60.0)) -> np.ndarray:
    """A rotation about z composed with the zooms: oblique, non-trivial spacing."""
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot * ZOOMS
    affine[:3, 3] = origin
    return affine


def _scan(dtype=np.int16) -> np.ndarray:
    image, _ = blob_case(shape=SHAPE[::-1])
    return np.asarray(image.T, dtype=dtype)  # nibabel's (x, y, z) order


def _nifti(
    path: Path,
    *,
    sform: np.ndarray | None,
    qform: np.ndarray | None,
    zooms=ZOOMS,
    version: int = 1,
) -> Path:
    """A NIfTI file with exactly the given affines (None: that code is 0) and pixdim."""
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(_scan(), None)
    img.set_sform(sform if sform is not None else np.eye(4), code=1 if sform is not None else 0)
    img.set_qform(qform if qform is not None else np.eye(4), code=1 if qform is not None else 0)
    img.header.set_zooms(zooms)  # after the affines: set_qform also sets pixdim
    nib.save(img, path)
    return path


def _big_endian(src: Path, dst: Path) -> Path:
    """The same image with a big-endian header and data."""
    img = nib.load(src)
    header = img.header.as_byteswapped(">")
    header.set_data_offset(352)
    data = np.asarray(img.dataobj).astype(header.get_data_dtype())
    raw = header.binaryblock + b"\0" * 4  # no extensions
    return _save_raw(dst, raw + data.tobytes(order="F"))


def _nib(path: Path) -> nib.Nifti1Image:
    """nibabel's reading of a NIfTI-1 file by content (it goes by name: `.gz` means gzip)."""
    raw = path.read_bytes()
    return nib.Nifti1Image.from_bytes(gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw)


def _save_raw(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _shifted(mm: float) -> np.ndarray:
    moved = _affine()
    moved[:3, 3] += (mm, 0.0, 0.0)
    return moved


def _bad(kind: str, path: Path) -> Path:
    """One header that ITK would read differently from nibabel/FSL, per kind."""
    good = _affine()
    if kind == "qform_60mm_from_sform":
        return _nifti(path, sform=good, qform=_shifted(60.0))
    if kind == "qform_turned_from_sform":
        return _nifti(path, sform=good, qform=_affine(degrees=30.0))
    if kind == "qform_flipped_from_sform":
        return _nifti(path, sform=good, qform=good @ np.diag([1.0, 1.0, -1.0, 1.0]))
    if kind == "sform_scales_not_pixdim":
        return _nifti(path, sform=good, qform=None, zooms=(0.8, 1.2, 3.0))
    if kind == "sheared_sform":
        sheared = good.copy()
        sheared[0, 2] += 0.5
        sheared[:3, 2] *= ZOOMS[2] / np.linalg.norm(sheared[:3, 2])  # norms still = pixdim
        return _nifti(path, sform=sheared, qform=None)
    if kind in ("negative_pixdim", "zero_pixdim"):  # nibabel refuses to set either
        raw = bytearray(nib.Nifti1Image(_scan(), good).to_bytes())
        raw[80:84] = np.float32(-1.2 if kind == "negative_pixdim" else 0.0).tobytes()
        return _save_raw(path, bytes(raw))  # pixdim[1], little-endian
    if kind == "big_endian_qform_60mm":
        src = _nifti(path.with_name("le_" + path.name), sform=good, qform=_shifted(60.0))
        return _big_endian(src, path)
    raise ValueError(kind)


BAD = {
    "qform_60mm_from_sform": "sform and qform disagree",
    "qform_turned_from_sform": "sform and qform disagree",
    "qform_flipped_from_sform": "sform and qform disagree",
    "sform_scales_not_pixdim": "disagrees with pixdim",
    "sheared_sform": "orthonormal",  # ITK's own refusal
    "negative_pixdim": "not positive",
    "zero_pixdim": "not positive",
    "big_endian_qform_60mm": "sform and qform disagree",
}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
@pytest.mark.parametrize("kind", list(BAD))
def test_headers_itk_would_read_differently_are_refused(tmp_path: Path, kind: str, suffix: str):
    path = _bad(kind, tmp_path / f"scan{suffix}")
    for read in (read_info, read_image):
        with pytest.raises(InputError, match=BAD[kind]) as info:
            read(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message


@pytest.mark.parametrize("kind", ["qform_60mm_from_sform", "sform_scales_not_pixdim"])
def test_a_refused_header_through_the_cli(tmp_path: Path, run: Path, kind: str):
    """predict, info, evaluate (as prediction or ground truth) and train all refuse it."""
    bad = _bad(kind, tmp_path / "scan.nii.gz")
    out = tmp_path / "mask.nii.gz"
    assert_user_error(invoke("predict", "--model", run, "--input", bad, "--output", out), bad.name)
    assert not out.exists()
    assert_user_error(invoke("info", bad), str(bad), BAD[kind])
    for broken, intact in (("pred", "gt"), ("gt", "pred")):  # the bad file on either side
        folders = {name: tmp_path / f"{broken}_{name}" for name in ("pred", "gt")}
        _mask(folders[intact] / "case_00000.nii.gz")
        folders[broken].mkdir()
        target = Path(shutil.copy(bad, folders[broken] / "case_00000.nii.gz"))
        result = invoke("evaluate", "--pred", folders["pred"], "--gt", folders["gt"])
        assert_user_error(result, str(target), BAD[kind])
    data = tmp_path / "kits"
    for i in range(3):
        _mask(data / f"case_{i:05d}" / "segmentation.nii.gz")
        nib.save(nib.Nifti1Image(_scan(), _affine()), data / f"case_{i:05d}" / "imaging.nii.gz")
    target = Path(shutil.copy(bad, data / "case_00001" / "imaging.nii.gz"))
    result = invoke("train", "--data", data, "--out", tmp_path / "r", *SEED_16)
    assert_user_error(result, str(target), BAD[kind])


def _mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image((_scan() > 100).astype(np.uint8), _affine()), path)
    return path


def _valid(kind: str, path: Path) -> Path:
    good = _affine()
    if kind == "sform_only_nibabel":
        img = nib.Nifti1Image(_scan(), good)  # nibabel's default: sform_code 2, qform_code 0
        nib.save(img, path)
        assert img.header["qform_code"] == 0 and img.header["sform_code"] > 0
        return path
    if kind == "qform_only":
        return _nifti(path, sform=None, qform=good)
    if kind == "both_equal":
        return _nifti(path, sform=good, qform=good)
    if kind == "both_equal_flipped":  # a left-handed grid: qfac = -1
        flipped = good @ np.diag([1.0, 1.0, -1.0, 1.0])
        return _nifti(path, sform=flipped, qform=flipped)
    if kind == "big_endian_both_equal":
        return _big_endian(_nifti(path.with_name("le.nii"), sform=good, qform=good), path)
    if kind == "sitk_written":
        img = sitk.GetImageFromArray(_scan().T)
        img.SetSpacing(ZOOMS)
        img.SetOrigin((10.0, -20.0, 30.0))
        img.SetDirection(
            np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0].ravel().tolist()
        )
        sitk.WriteImage(img, str(path))
        return path
    if kind == "uncompressed_named_gz":
        plain = _nifti(path.with_name("plain.nii"), sform=good, qform=good)
        return Path(shutil.copy(plain, path))
    raise ValueError(kind)


VALID = [
    "sform_only_nibabel",
    "qform_only",
    "both_equal",
    "both_equal_flipped",
    "big_endian_both_equal",
    "sitk_written",
    "uncompressed_named_gz",
]


@pytest.mark.parametrize("kind", VALID)
def test_valid_headers_read_and_a_mask_keeps_their_affine(tmp_path: Path, kind: str):
    """Read, write a mask on the geometry read, and the mask's sform and qform (as nibabel
    sees them) are the input's own affine."""
    path = _valid(kind, tmp_path / "scan.nii.gz")
    array, geometry = read_image(path)
    assert read_info(path).geometry.same_grid(geometry, atol=1e-6)
    out = write_image(tmp_path / "mask.nii.gz", (array > 100).astype(np.uint8), geometry)
    src, mask = _nib(path), nib.load(out)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), np.asarray(src.dataobj) > 100)
    for affine in (mask.get_sform(), mask.get_qform()):
        np.testing.assert_allclose(affine, src.affine, atol=1e-4)


def test_masks_predicted_for_sform_only_input_carry_its_affine(tmp_path: Path, run: Path):
    src = _valid("sform_only_nibabel", tmp_path / "scan.nii.gz")
    out = tmp_path / "mask.nii.gz"
    result = invoke("predict", "--model", run, "--input", src, "--output", out)
    assert result.exit_code == 0, result.output
    mask = nib.load(out)
    assert mask.shape == SHAPE
    for affine in (mask.get_sform(), mask.get_qform()):
        np.testing.assert_allclose(affine, nib.load(src).affine, atol=1e-4)


@pytest.mark.parametrize("case", ["case_00000", "case_00015", "case_00023", "case_00037"])
def test_real_kits19_labels_pass(tmp_path: Path, case: str):
    """Some are qform-only uint16, the others have both affines set and equal."""
    path = kits_dir(tmp_path) / case / "segmentation.nii.gz"
    assert read_info(path).geometry.shape == nib.load(path).shape[::-1]
    nifti.check_nifti(path, finite=False)


def test_every_real_kits19_header_passes(tmp_path: Path):
    """Headers only (first bytes of each file), so all cases present are cheap to check."""
    paths = sorted(kits_dir(tmp_path).glob("case_*/segmentation.nii.gz"))
    for path in paths:
        with gzip.open(path, "rb") as fh:
            header = nifti._parse(fh.read(540))
        assert header is not None and nifti._geometry_problem(header) is None, path


# ---- NIfTI-2 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["two.nii.gz", "two.nii"])
def test_nifti2_is_refused_by_name(tmp_path: Path, run: Path, name: str):
    """This SimpleITK has no NIfTI-2 reader: the one line says NIfTI-2 and how to convert."""
    path = _nifti(tmp_path / name, sform=_affine(), qform=_affine(), version=2)
    assert nib.load(path).header.sizeof_hdr == 540
    for read in (read_info, read_image):
        with pytest.raises(InputError, match="is NIfTI-2") as info:
            read(path)
        assert str(info.value).startswith(f"{path}: ") and "Nifti1Image" in str(info.value)
    assert_user_error(invoke("info", path), str(path), "NIfTI-2")
    out = tmp_path / "mask.nii.gz"
    result = invoke("predict", "--model", run, "--input", path, "--output", out)
    assert_user_error(result, str(path), "NIfTI-2")
    assert not out.exists()


# ---- DICOM series ----------------------------------------------------------------------------


def _dicom_series(folder: Path, positions: list[float], spacing=(0.8, 0.6)) -> list[Path]:
    """One int16 slice per position along z (mm), written by SimpleITK with CT tags."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k, z in enumerate(positions):
        sl = sitk.GetImageFromArray(rng.integers(-1000, 1000, (8, 10)).astype(np.int16))
        sl.SetSpacing(spacing[::-1])
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0032": f"-10.000000\\20.000000\\{z:.6f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0028|0030": f"{spacing[0]:.6f}\\{spacing[1]:.6f}",
        }.items():
            sl.SetMetaData(tag, value)
        files.append(folder / f"slice_{k:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(sl)
    return files


def test_complete_dicom_series_reads(tmp_path: Path):
    _dicom_series(tmp_path / "series", [30.0 + 2.5 * k for k in range(7)])
    array, geometry = read_image(tmp_path / "series")
    assert array.shape == (7, 8, 10)
    np.testing.assert_allclose(geometry.spacing, (2.5, 0.8, 0.6), atol=1e-5)


@pytest.mark.parametrize("missing", [1, 3, 5])
def test_dicom_series_with_a_missing_slice_is_refused(tmp_path: Path, run: Path, missing: int):
    folder = tmp_path / "series"
    files = _dicom_series(folder, [30.0 + 2.5 * k for k in range(7)])
    files[missing].unlink()
    where = f"(-10.00, 20.00, {30.0 + 2.5 * missing:.2f}) mm"
    with pytest.raises(InputError, match="slice missing") as info:
        read_image(folder)
    assert str(info.value).startswith(f"{folder}: ") and where in str(info.value)
    assert_user_error(invoke("info", folder), str(folder), "slice missing", where)
    out = tmp_path / "mask.nii.gz"
    result = invoke("predict", "--model", run, "--input", folder, "--output", out)
    assert_user_error(result, str(folder), "slice missing", where)
    assert not out.exists()


def test_unevenly_spaced_dicom_slices_are_refused(tmp_path: Path):
    positions = [30.0 + 2.5 * k for k in range(7)]
    positions[3] += 1.0  # 40% of a gap off the grid
    _dicom_series(tmp_path / "series", positions)
    with pytest.raises(InputError, match="unevenly spaced"):
        read_image(tmp_path / "series")


def test_dicom_positions_rounded_in_the_file_still_read(tmp_path: Path):
    """0.625 mm slices written with two decimals: off the grid by at most 0.005 mm."""
    _dicom_series(tmp_path / "series", [round(-12.0 + 0.625 * k, 2) for k in range(9)])
    array, geometry = read_image(tmp_path / "series")
    assert array.shape[0] == 9 and abs(geometry.spacing[0] - 0.625) < 1e-3


# ---- library warnings ------------------------------------------------------------------------


def _voxseg(*args: str | Path) -> subprocess.CompletedProcess:
    """The CLI in its own process: GDCM writes to the real stderr, which CliRunner cannot see."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, "-m", "voxseg", *map(str, args)],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        env=env,
        timeout=300,
    )


def test_scanning_odd_folders_for_dicom_prints_no_library_warning(tmp_path: Path):
    """Subfolders and files that are not DICOM make GDCM print WARNING lines by itself."""
    root = tmp_path / "scans"
    _dicom_series(root / "series_a", [30.0 + 2.5 * k for k in range(4)])
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an image\n", encoding="utf-8")
    (root / "notes" / "deeper").mkdir()
    (root / "series_a" / "notes.txt").write_text("scanned on a Tuesday\n", encoding="utf-8")
    result = _voxseg("info", root)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr + result.stdout, result.stderr
    assert "series_a" in result.stdout
    assert "WARNING" in _voxseg("--debug", "info", root).stderr  # they are there to hide
