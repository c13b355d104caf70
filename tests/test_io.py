import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from tests.conftest import IPL, geometry_for, kits_dir, oblique_direction
from voxseg.data.io import read_image, read_info, write_image, write_mask
from voxseg.errors import InputError, OutputExistsError

QFORM_ONLY_UINT16 = ["case_00015", "case_00023", "case_00037", "case_00039"]


@pytest.mark.parametrize("case", ["case_00000", *QFORM_ONLY_UINT16])
def test_kits19_label_round_trip_is_exact(tmp_path: Path, case: str):
    src = kits_dir(tmp_path) / case / "segmentation.nii.gz"
    array, geometry = read_image(src)
    out = write_image(tmp_path / "copy.nii.gz", array, geometry)
    back, back_geometry = read_image(out)
    assert back.dtype == array.dtype
    np.testing.assert_array_equal(back, array)
    assert back_geometry.same_grid(geometry, atol=1e-6)
    # Seen through nibabel: same array axis order, same affine, same I,P,L orientation.
    a, b = nib.load(src), nib.load(out)
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=1e-5)
    assert nib.aff2axcodes(b.affine) == ("I", "P", "L")


def test_kits19_qform_only_files_are_uint16_with_ipl(tmp_path: Path):
    img = nib.load(kits_dir(tmp_path) / "case_00015" / "segmentation.nii.gz")
    assert img.header["sform_code"] == 0 and img.header["qform_code"] > 0
    info = read_info(kits_dir(tmp_path) / "case_00015" / "segmentation.nii.gz")
    assert info.dtype == "uint16"
    assert info.geometry.orientation == "IPL"


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
@pytest.mark.parametrize("direction", [IPL, oblique_direction(30)])
def test_round_trip_formats(tmp_path: Path, suffix: str, direction):
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 1000, size=(5, 6, 7)).astype(np.int16)
    g = geometry_for(array.shape, spacing=(3.0, 0.7, 0.9), direction=direction)
    path = write_image(tmp_path / f"img{suffix}", array, g)
    back, bg = read_image(path)
    np.testing.assert_array_equal(back, array)
    assert bg.same_grid(g, atol=1e-5)
    assert not list(tmp_path.glob(".*part*")), "temporary file left behind"


def _write_dicom_series(folder: Path, array: np.ndarray, spacing, origin) -> None:
    folder.mkdir()
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing[::-1])
    img.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(array.shape[0]):
        sl = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0032": "\\".join(f"{p:.6f}" for p in pos),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1),
            "0018|0050": f"{spacing[0]:.6f}",
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[2]:.6f}",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(sl)


def test_dicom_series_folder(tmp_path: Path):
    array = np.random.default_rng(2).integers(-1000, 1000, size=(6, 8, 10)).astype(np.int16)
    _write_dicom_series(tmp_path / "series", array, (2.5, 0.8, 0.6), (-10.0, 20.0, 30.0))
    back, g = read_image(tmp_path / "series")
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(g.spacing, (2.5, 0.8, 0.6), atol=1e-5)
    np.testing.assert_allclose(g.origin, (-10.0, 20.0, 30.0), atol=1e-5)


def test_write_mask_is_binary_uint8_and_refuses_overwrite(tmp_path: Path):
    g = geometry_for((4, 4, 4))
    path = write_mask(tmp_path / "m.nii.gz", np.full((4, 4, 4), 7), g)
    back, _ = read_image(path)
    assert back.dtype == np.uint8 and set(np.unique(back)) == {1}
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_mask(path, np.zeros((4, 4, 4)), g)
    assert read_image(path)[0].max() == 1, "existing output must be untouched"


def _bad(tmp_path: Path, kind: str) -> Path:
    g = geometry_for((4, 5, 6))
    good = write_image(tmp_path / "good.nii.gz", np.zeros((4, 5, 6), np.int16), g)
    p = tmp_path / f"{kind}.nii.gz"
    if kind == "random":
        p.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "truncated":
        p.write_bytes(good.read_bytes()[:60])
    elif kind == "short_data":
        raw = gzip.decompress(good.read_bytes())
        p.write_bytes(gzip.compress(raw[: len(raw) - 100]))
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(p))
    elif kind == "4d":
        sitk.WriteImage(
            sitk.GetImageFromArray(np.zeros((2, 3, 4, 5), np.int16), isVector=False), str(p)
        )
    elif kind == "nan":
        a = np.zeros((4, 5, 6), np.float32)
        a[1, 2, 3] = np.nan
        a[0, 0, 0] = np.inf
        nib.save(nib.Nifti1Image(a, np.eye(4)), p)  # SimpleITK's writer would zero them
    return p


@pytest.mark.parametrize("kind", ["random", "truncated", "short_data", "empty", "2d", "4d", "nan"])
def test_bad_files_raise_one_line_input_error(tmp_path: Path, kind: str):
    p = _bad(tmp_path, kind)
    with pytest.raises(InputError) as info:
        read_image(p)
    message = str(info.value)
    assert str(p) in message and "\n" not in message


def test_missing_file(tmp_path: Path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.nii.gz")
