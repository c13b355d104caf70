"""The only module that reads or writes image files. Everything else sees arrays + Geometry.

SimpleITK does the file formats (NIfTI, NRRD, MHA, DICOM series) and keeps the header's
geometry; nothing here assumes RAS or any axis order beyond what the header says.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxseg.atomic import atomic_files, atomic_path, likely_cause, short_write, write_error
from voxseg.data.nifti import check_nifti, is_nifti2
from voxseg.errors import InputError, OutputExistsError, VoxsegError
from voxseg.geometry import Geometry

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
TWO_FILE_SUFFIXES = (".nhdr", ".mhd")
"""A header that names a separate data file (`m.mhd` + `m.zraw`, `m.nhdr` + `m.raw.gz`)."""
_SLICE_TOL = 0.05  # a DICOM slice may sit this fraction of a slice gap off the regular grid


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

    # GDCM's own warnings (scanning subfolders, files that are not DICOM) obey this switch
    # too: tests/test_geometry_integrity.py checks a folder scan prints none.
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


def dicom_files(path: Path) -> list[str]:
    """The series' files in slice order, refused unless the slices are evenly spaced."""
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not ids:
        raise InputError(f"{path}: folder holds no DICOM series; give an image file or a series")
    if len(ids) > 1:
        raise InputError(
            f"{path}: folder holds {len(ids)} DICOM series; put each series in its own folder"
        )
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), ids[0]))
    positions = _slice_positions(files)
    if positions is not None:
        _check_slice_gaps(path, files, *positions)
    return files


def _slice_positions(files: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Each file's ImagePositionPatient and its distance along the slice normal (mm); None
    when a file lacks the position or orientation tags (nothing to check then)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    points, normal = [], None
    for name in files:
        reader.SetFileName(name)
        reader.ReadImageInformation()
        if not (reader.HasMetaDataKey("0020|0032") and reader.HasMetaDataKey("0020|0037")):
            return None
        point = _numbers(reader.GetMetaData("0020|0032"), 3)
        axes = _numbers(reader.GetMetaData("0020|0037"), 6)
        if point is None or axes is None:
            return None
        normal = np.cross(axes[:3], axes[3:]) if normal is None else normal
        points.append(point)
    points = np.asarray(points)
    return points, points @ normal


def _numbers(value: str, count: int) -> np.ndarray | None:
    try:
        numbers = np.array([float(v) for v in value.strip().split("\\")])
    except ValueError:
        return None
    return numbers if numbers.size == count and np.isfinite(numbers).all() else None


def _check_slice_gaps(path: Path, files: list[str], points: np.ndarray, along: np.ndarray) -> None:
    """ITK stacks the slices on a regular grid (the average gap), so a missing or misplaced
    slice would silently shift every slice after it."""
    if len(files) < 3:
        return
    gaps = np.diff(along) * (1.0 if along[-1] >= along[0] else -1.0)
    step = float(np.median(gaps))
    wide = np.flatnonzero(gaps > 1.5 * step) if step > 0 else []
    if len(wide):
        i = int(wide[0])
        missing = points[i] + (points[i + 1] - points[i]) * step / gaps[i]
        raise InputError(
            f"{path}: slice missing at ({', '.join(f'{v:.2f}' for v in missing)}) mm, between "
            f"{Path(files[i]).name} and {Path(files[i + 1]).name} ({gaps[i]:.3g} mm apart, the "
            f"others {step:.3g} mm); add the missing file or re-export the series"
        )
    regular = along[0] + np.arange(len(along)) * (along[-1] - along[0]) / (len(along) - 1)
    if not step > 0 or np.abs(along - regular).max() > _SLICE_TOL * step:
        raise InputError(
            f"{path}: DICOM slices are unevenly spaced (gaps from {gaps.min():.3g} to "
            f"{gaps.max():.3g} mm) and would be misplaced on a regular grid; check the folder "
            "holds one complete scan, or resample it"
        )


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
        _refuse_nifti2(path)
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


def _refuse_nifti2(path: Path) -> None:
    """This build of ITK has no NIfTI-2 reader; say so instead of 'cannot read'."""
    if path.is_file() and is_nifti2(path):
        raise InputError(
            f"{path}: is NIfTI-2, which voxseg's image library (ITK) cannot read; convert it to "
            "NIfTI-1 (nibabel: nib.save(nib.Nifti1Image.from_image(nib.load(src)), dst))"
        )


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
            reader.SetFileNames(dicom_files(path))
            img = reader.Execute()
        else:
            img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        _refuse_nifti2(path)
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


def refuse_replacing_inputs(outputs: Iterable[Path], inputs: Iterable[Path | None]) -> None:
    """Inputs are never replaced, --overwrite or not: one line for an output that is a file
    the command reads, lies inside an input folder (a DICOM series), or is a folder that
    holds an input it would write over. Every writer calls this before its first write."""
    read = {Path(p).resolve() for p in inputs if p is not None}
    for out in outputs:
        target = Path(out).resolve()
        hit = target if target in read else next((d for d in target.parents if d in read), None)
        if hit is not None:
            raise InputError(
                f"{out}: would replace the input {hit}; write outputs outside the inputs"
            )


def write_image(
    path: str | Path,
    array: np.ndarray,
    geometry: Geometry,
    *,
    overwrite: bool = False,
    compress: bool = True,
    note: str = "",
) -> Path:
    """Write `array` on `geometry` atomically (temporary file, fsync, rename).

    What was written is read back before it takes its name; a failure (full disk, a size
    limit) raises one VoxsegError naming `path` and leaves nothing behind. `note` goes into
    the header (NIfTI `descrip`, at most 79 characters; see `read_note`).
    """
    path = Path(path)
    check_output(path, overwrite)
    if tuple(array.shape) != tuple(geometry.shape):
        raise VoxsegError(
            f"{path}: array shape {array.shape} does not match geometry {geometry.shape}"
        )
    img = _itk_image(array, geometry)
    if note:
        img.SetMetaData(_NOTE_KEY, note[:79])
    suffix = next((s for s in IMAGE_SUFFIXES if path.name.lower().endswith(s)), path.suffix)
    if suffix in TWO_FILE_SUFFIXES:
        with atomic_files(path, exclusive=not overwrite) as folder:
            _write_checked(img, folder / path.name, path, geometry, compress)
            _check_companions(folder, path, overwrite)
    else:
        # The suffix picks SimpleITK's writer; without overwrite, a file another process
        # created meanwhile is never replaced.
        with atomic_path(path, suffix=suffix, exclusive=not overwrite) as tmp:
            _write_checked(img, tmp, path, geometry, compress)
    return path


_NOTE_KEY = "ITK_FileNotes"
"""ITK's name for a file's free-text note (NIfTI descrip, NRRD/MHA key)."""


def read_note(path: str | Path) -> str:
    """The free-text note in a file's header ('' when none or unreadable)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    for key in (_NOTE_KEY, "descrip"):
        if reader.HasMetaDataKey(key):
            return reader.GetMetaData(key).strip()
    return ""


def _itk_image(array: np.ndarray, geometry: Geometry):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing([float(s) for s in geometry.spacing[::-1]])
    img.SetOrigin([float(o) for o in geometry.origin])
    img.SetDirection([float(d) for d in geometry.direction])
    return img


def _write_checked(img, tmp: Path, path: Path, geometry: Geometry, compress: bool) -> None:
    """Write to `tmp` and read it back: ITK does not always raise when a write fails (a full
    disk can leave an empty or cut-off file that would look finished). Errors name `path`."""
    import SimpleITK as sitk

    try:
        sitk.WriteImage(img, str(tmp), useCompression=compress)
    except RuntimeError as exc:  # ITK's text may hold no OS cause ("failed to flush")
        cause = ", ".join(filter(None, [_reason(exc), likely_cause(tmp.parent)]))
        raise write_error(path, cause) from exc
    try:
        if tmp.name.lower().endswith((".nii", ".nii.gz")):
            written = read_info(tmp).geometry  # header, and every byte counted (nifti.py)
        else:
            written = _geometry(_read(tmp))  # the data file(s) too, decoded to the end
    except InputError as exc:  # its message names the temporary file: `--debug` shows it
        raise write_error(path, short_write(tmp.parent)) from exc
    if not written.same_grid(geometry):
        raise VoxsegError(
            f"{path}: the file written reads back on another grid (spacing {written.spacing}, "
            f"origin {written.origin}) than the one given; write another format (e.g. .nrrd)"
        )


def _check_companions(folder: Path, path: Path, overwrite: bool) -> None:
    """A header's data file takes a name of its own beside `path`: never over a user's file."""
    for part in folder.iterdir():
        target = path.parent / part.name
        if part.name != path.name and target.exists() and not overwrite:
            raise OutputExistsError(
                f"{target}: already exists (the data file of {path.name}); "
                "pass --overwrite to replace it"
            )


def write_mask(
    path: str | Path,
    mask: np.ndarray,
    geometry: Geometry,
    *,
    overwrite: bool = False,
    note: str = "",
) -> Path:
    """A binary mask as uint8 {0, 1} on exactly `geometry`."""
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    return write_image(path, binary, geometry, overwrite=overwrite, note=note)
