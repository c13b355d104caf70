"""The only module that reads or writes image files. Everything else sees arrays + Geometry.

SimpleITK does the file formats (NIfTI, NRRD, MHA, DICOM series) and keeps the header's
geometry; nothing here assumes RAS or any axis order beyond what the header says.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxseg.atomic import atomic_path
from voxseg.data.nifti import check_nifti
from voxseg.errors import InputError, OutputExistsError, VoxsegError
from voxseg.geometry import Geometry

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class ImageInfo:
    """What the header says, read without loading the voxels."""

    path: Path
    geometry: Geometry
    dtype: str


def show_library_warnings(show: bool) -> None:
    """ITK and GDCM print WARNING lines on stderr (sform notes, odd folders); voxseg reports
    what matters itself, so they are shown only when asked (`voxseg --debug`)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalWarningDisplay(show)


def image_stem(path: Path) -> str:
    """File name without its image extension: ``scan_7.nii.gz`` -> ``scan_7``."""
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def is_dicom_dir(path: Path) -> bool:
    if not path.is_dir():
        return False
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path)))


def _reason(exc: Exception) -> str:
    """The useful line of an ITK exception (they run to a dozen lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "description:" in ln.lower():
            return ln.split(":", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file or folder; check the path")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied; make it readable (chmod +r)")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty; re-download or re-export it")


def _dicom_files(path: Path) -> list[str]:
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not ids:
        raise InputError(f"{path}: folder holds no DICOM series; give an image file or a series")
    if len(ids) > 1:
        raise InputError(
            f"{path}: folder holds {len(ids)} DICOM series; put each series in its own folder"
        )
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0]))


def _geometry(img) -> Geometry:
    return Geometry(
        shape=tuple(int(s) for s in img.GetSize()[::-1]),
        spacing=tuple(float(s) for s in img.GetSpacing()[::-1]),
        origin=tuple(float(o) for o in img.GetOrigin()),
        direction=tuple(float(d) for d in img.GetDirection()),
    )


def _check_3d(path: Path, size: tuple[int, ...], components: int) -> None:
    dims = len(size)
    if dims == 4 and size[3] == 1:
        return
    if dims != 3:
        raise InputError(
            f"{path}: image is {dims}D with size {tuple(size)}; voxseg needs a single 3D volume "
            "(split 4D series into 3D files)"
        )
    if components != 1:
        raise InputError(
            f"{path}: image has {components} components per voxel; give a single-channel scan"
        )
    if min(size) == 0:
        raise InputError(f"{path}: image has a zero-length axis {tuple(size)}; re-export it")


def read_info(path: str | Path) -> ImageInfo:
    """Header only: geometry and voxel type, without reading the voxels."""
    import SimpleITK as sitk

    path = Path(path)
    _check_readable(path)
    if path.is_dir():
        img = _read(path)
        return ImageInfo(path, _geometry(img), _dtype_name(img))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(
            f"{path}: cannot read image header ({_reason(exc)}); "
            "check it is a complete NIfTI/NRRD/MHA file or re-download it"
        ) from exc
    size = reader.GetSize()
    _check_3d(path, size, reader.GetNumberOfComponents())
    size = size[:3]
    geometry = Geometry(
        shape=tuple(int(s) for s in size[::-1]),
        spacing=tuple(float(s) for s in reader.GetSpacing()[:3][::-1]),
        origin=tuple(float(o) for o in reader.GetOrigin()[:3]),
        direction=_direction3(reader.GetDirection()),
    )
    if path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti(path, finite=False)  # cheap: header and gzip trailer only
    dtype = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    return ImageInfo(path, geometry, _DTYPES.get(dtype, dtype))


def _direction3(direction: tuple[float, ...]) -> tuple[float, ...]:
    n = int(round(len(direction) ** 0.5))
    m = np.asarray(direction, dtype=np.float64).reshape(n, n)[:3, :3]
    return tuple(float(v) for v in m.reshape(-1))


_DTYPES = {
    "8-bit unsigned integer": "uint8",
    "8-bit signed integer": "int8",
    "16-bit unsigned integer": "uint16",
    "16-bit signed integer": "int16",
    "32-bit unsigned integer": "uint32",
    "32-bit signed integer": "int32",
    "64-bit unsigned integer": "uint64",
    "64-bit signed integer": "int64",
    "32-bit float": "float32",
    "64-bit float": "float64",
}


def _dtype_name(img) -> str:
    return _DTYPES.get(img.GetPixelIDTypeAsString(), img.GetPixelIDTypeAsString())


def _read(path: Path):
    import SimpleITK as sitk

    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(_dicom_files(path))
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(
            f"{path}: cannot read image ({_reason(exc)}); "
            "check it is a complete NIfTI/NRRD/MHA file or DICOM series, or re-download it"
        ) from exc
    _check_3d(path, img.GetSize(), img.GetNumberOfComponentsPerPixel())
    if img.GetDimension() == 4:
        import SimpleITK as sitk

        img = sitk.Extract(img, [*img.GetSize()[:3], 0], [0, 0, 0, 0])
    return img


def read_image(path: str | Path, *, allow_nonfinite: bool = False) -> tuple[np.ndarray, Geometry]:
    """Voxels (array order, the file's own dtype) and the header's geometry."""
    import SimpleITK as sitk

    path = Path(path)
    _check_readable(path)
    img = _read(path)
    if path.is_file() and path.name.lower().endswith((".nii", ".nii.gz")):
        check_nifti(path)  # short data and NaN/inf, which ITK hides
    array = sitk.GetArrayFromImage(img)
    if not allow_nonfinite and array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputError(
            f"{path}: {bad} voxels are NaN or infinite; fix or re-export the scan "
            "(e.g. replace them with the background value)"
        )
    return array, _geometry(img)


def check_output(path: Path, overwrite: bool) -> None:
    """Refuse to replace an existing output unless asked to."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path}: already exists; pass --overwrite to replace it")


def write_image(
    path: str | Path,
    array: np.ndarray,
    geometry: Geometry,
    *,
    overwrite: bool = False,
    compress: bool = True,
) -> Path:
    """Write `array` on `geometry` atomically (temporary file, fsync, rename)."""
    import SimpleITK as sitk

    path = Path(path)
    check_output(path, overwrite)
    if tuple(array.shape) != tuple(geometry.shape):
        raise VoxsegError(
            f"{path}: array shape {array.shape} does not match geometry {geometry.shape}"
        )
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing([float(s) for s in geometry.spacing[::-1]])
    img.SetOrigin([float(o) for o in geometry.origin])
    img.SetDirection([float(d) for d in geometry.direction])
    suffix = next((s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    try:
        with atomic_path(path, suffix=suffix) as tmp:  # the suffix picks SimpleITK's writer
            sitk.WriteImage(img, str(tmp), useCompression=compress)
    except (RuntimeError, OSError) as exc:
        raise VoxsegError(
            f"{path}: cannot write ({_reason(exc)}); check free space and permissions of the "
            "output folder"
        ) from exc
    return path


def write_mask(
    path: str | Path, mask: np.ndarray, geometry: Geometry, *, overwrite: bool = False
) -> Path:
    """A binary mask as uint8 {0, 1} on exactly `geometry`."""
    return write_image(path, (np.asarray(mask) > 0).astype(np.uint8), geometry, overwrite=overwrite)
