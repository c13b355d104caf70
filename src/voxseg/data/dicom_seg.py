"""A prediction as a DICOM Segmentation object (highdicom) that references its source series.

Only for scans read from a DICOM series folder. Every frame names the source instance it lies
on, so a PACS or viewer overlays it on the right slice; that pairing is computed from each
instance's position on the scan's `Geometry` and checked, never taken from file order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from voxseg._version import __version__
from voxseg.atomic import atomic_path
from voxseg.data.io import check_output, dicom_files
from voxseg.errors import ConfigError, InputError
from voxseg.geometry import Geometry

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.sr.coding import Code

SERIES_NUMBER = 900
"""The SEG's own series number; any value, scanners number their series from 1 upwards."""
_OFF_GRID = 0.5  # an instance further than this many voxels from its slice is on another grid

# Segment name -> (property category, property type), keywords of SNOMED CT in pydicom's
# `codes.SCT` (DICOM CID 7150 / 7151). Anything else is coded as generic tissue.
_CODED_NAMES: dict[str, tuple[str, str]] = {
    "kidney": ("AnatomicalStructure", "Kidney"),
    "kidney+tumour": ("AnatomicalStructure", "Kidney"),  # KiTS: kidney with its tumour
    "kidney+tumor": ("AnatomicalStructure", "Kidney"),
    "tumour": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "tumor": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "neoplasm": ("MorphologicallyAbnormalStructure", "Neoplasm"),
    "mass": ("MorphologicallyAbnormalStructure", "Mass"),
    "lesion": ("MorphologicallyAbnormalStructure", "Lesion"),
    "cyst": ("MorphologicallyAbnormalStructure", "Cyst"),
}
_GENERIC = ("Tissue", "Tissue")


@dataclass(frozen=True)
class Segment:
    """One segment of the SEG: the voxels whose label is any of `values` (segments may overlap,
    e.g. kidney+tumour {1, 2} and tumour {2})."""

    name: str
    """Segment label shown by viewers, e.g. "kidney+tumour"."""
    values: tuple[int, ...]
    """Label values of the mask that belong to this segment."""
    category: Code
    """Segmented property category (CID 7150), e.g. SCT Anatomical Structure."""
    property_type: Code
    """Segmented property type (CID 7151), e.g. SCT Kidney."""

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise ConfigError(f"segment {self.values}: give it a name")
        if not self.values or any(not 0 < v < 256 for v in self.values):
            raise ConfigError(
                f"segment {self.name!r}: label values {self.values} must be 1..255 (0 is "
                "background); give at least one"
            )


def segment(name: str, values: Sequence[int]) -> Segment:
    """A segment coded from its name: kidney, tumour, cyst... get their SNOMED CT codes, any
    other name the generic Tissue / Tissue (the name stays its label)."""
    from pydicom.sr.codedict import codes

    category, kind = _CODED_NAMES.get(name.strip().lower(), _GENERIC)
    return Segment(
        name, tuple(int(v) for v in values), getattr(codes.SCT, category), getattr(codes.SCT, kind)
    )


def kits_segments() -> tuple[Segment, ...]:
    """A KiTS label map (1 kidney, 2 tumour) as its two usual structures."""
    return segment("kidney+tumour", (1, 2)), segment("tumour", (2,))


def series_files(folder: Path) -> list[Path]:
    """The instance files of the DICOM series in `folder` (a discovered `Case.image`), refused
    as `read_image` refuses them (several series, a missing slice). The SEG pairs frames with
    instances by position, so their order does not matter here."""
    return [Path(f) for f in dicom_files(Path(folder))]


def write_dicom_seg(
    mask: np.ndarray,
    series_files: Sequence[Path],
    out: Path,
    segments: Sequence[Segment],
    *,
    geometry: Geometry,
    overwrite: bool = False,
) -> Path:
    """Write `mask` (uint8, array order, on `geometry` as `read_image` returned it for the
    series) as a BINARY DICOM SEG at `out`, one segment per `Segment`, each frame referencing
    the source instance it lies on. Written atomically; an existing `out` only if `overwrite`.
    """
    out = Path(out)
    files = [Path(f) for f in series_files]
    if not files:
        raise InputError(f"{out}: no source DICOM files given; pass the series' files")
    folder = files[0].parent
    check_output(out, overwrite)
    if out.resolve().parent in {f.resolve().parent for f in files}:
        raise InputError(
            f"{out}: is inside the source series folder, which would then hold two series; "
            "write the SEG to another folder"
        )
    if not segments:
        raise ConfigError(f"{out}: no segments to write; give at least one")
    if tuple(mask.shape) != tuple(geometry.shape):
        raise InputError(
            f"{folder}: the mask has shape {tuple(mask.shape)} but the series is "
            f"{geometry.shape} (slices, rows, columns); write the mask predicted on this series"
        )
    sources = _by_slice(_read_headers(files), files, geometry)
    seg = _segmentation(np.asarray(mask), sources, segments, folder)
    with atomic_path(out, suffix=".dcm", exclusive=not overwrite) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return out


def _read_headers(files: Sequence[Path]) -> list[Dataset]:
    """Headers only: highdicom needs the source instances' attributes, not their pixels."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except (OSError, InvalidDicomError) as exc:
            raise InputError(
                f"{f}: cannot read DICOM header ({exc}); re-export the series"
            ) from exc
    return headers


def _by_slice(headers: list[Dataset], files: list[Path], geometry: Geometry) -> list[Dataset]:
    """The headers in mask order: item k is the instance at voxel (k, 0, 0) of `geometry`.

    Each instance's index k is its ImagePositionPatient read on `geometry`'s grid; every k
    must be taken exactly once and lie within half a voxel of the grid, and each instance's
    rows, columns and orientation must be those of the grid.
    """
    folder = files[0].parent
    n, rows, cols = geometry.shape
    if len(headers) != n:
        raise InputError(
            f"{folder}: the series has {len(headers)} instances but the mask {n} slices; write "
            "the mask predicted on this series"
        )
    to_index = np.linalg.inv(geometry.index_to_world())
    spacing = np.asarray(geometry.spacing[::-1])  # ITK (i, j, k) order, as the indices
    direction = geometry.direction_matrix
    slots: dict[int, Dataset] = {}
    for f, ds in zip(files, headers, strict=True):
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(
                f"{f}: is a multi-frame image; DICOM SEG output supports series of single-frame "
                "instances only, write NIfTI masks instead"
            )
        position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if position is None or orientation is None:
            raise InputError(
                f"{f}: has no ImagePositionPatient/ImageOrientationPatient, so a SEG frame "
                "cannot be placed on it; write NIfTI masks instead"
            )
        axes = np.asarray(orientation, dtype=np.float64).reshape(2, 3)
        if (ds.get("Rows"), ds.get("Columns")) != (rows, cols) or not np.allclose(
            axes.T, direction[:, :2], atol=1e-3
        ):
            raise InputError(
                f"{f}: its slice ({ds.get('Rows')}x{ds.get('Columns')}, orientation "
                f"{list(np.round(axes.reshape(-1), 3))}) is not on the mask's grid; write the "
                "mask predicted on this series"
            )
        ijk = (to_index @ [*np.asarray(position, dtype=np.float64), 1.0])[:3]
        k = int(round(ijk[2]))
        off = np.abs(ijk - [0.0, 0.0, k]) * spacing
        if not 0 <= k < n or k in slots or (off > _OFF_GRID * spacing).any():
            raise InputError(
                f"{f}: does not sit on a slice of its own on the mask's grid (it is at slice "
                f"{ijk[2]:.2f} of 0..{n - 1}); write the mask predicted on this series"
            )
        slots[k] = ds
    return [slots[k] for k in range(n)]  # n instances on n distinct slots: all filled


def _segmentation(
    mask: np.ndarray, sources: list[Dataset], segments: Sequence[Segment], folder: Path
):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name="voxseg", family=codes.DCM.ArtificialIntelligence, version=__version__
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=s.name,
            segmented_property_category=s.category,
            segmented_property_type=s.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, s in enumerate(segments, 1)
    ]
    # Stacked segments (frames, rows, columns, segment): segments may overlap.
    stacked = np.stack([np.isin(mask, s.values) for s in segments], axis=-1)
    try:
        return hd.seg.Segmentation(
            source_images=sources,  # item k is mask slice k: highdicom pairs them by index
            pixel_array=stacked,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="voxseg",
            manufacturer_model_name="voxseg",
            software_versions=__version__,
            device_serial_number=__version__,  # software has no serial number: its version
            series_description="voxseg segmentation",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        # highdicom refuses series it cannot derive a SEG from (no frame of reference, missing
        # patient/study attributes, an unsupported image type): say which, in one line.
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{folder}: cannot make a DICOM SEG of this series ({reason}); write NIfTI masks "
            "instead"
        ) from exc
