"""Checks on raw NIfTI files that SimpleITK does not make.

ITK reads a NIfTI file whose data is shorter than its header promises without complaint,
and turns NaN/inf voxels into 0. Both hide broken inputs, so they are checked here on the
raw bytes: the size from the header against the file (or the gzip trailer), and float
voxels in one streamed pass that never holds more than a chunk in memory.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from voxseg.errors import InputError

_FLOAT_TYPES = {16: "f4", 64: "f8"}
_CHUNK = 1 << 26


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def check_nifti(path: Path, *, finite: bool = True) -> None:
    """Raise InputError if the voxel data is short or (with `finite`) holds NaN/inf.

    The size check reads only the header and the gzip trailer; the NaN check streams the data.
    NIfTI-1 only.
    """
    with _open(path) as fh:
        header = fh.read(348)
    if len(header) < 348:
        return  # SimpleITK reports unreadable headers itself
    for endian in "<>":
        if struct.unpack(f"{endian}i", header[:4])[0] == 348:
            break
    else:
        return  # NIfTI-2 or not NIfTI: leave it to SimpleITK
    dims = struct.unpack(f"{endian}8h", header[40:56])
    datatype, bitpix = struct.unpack(f"{endian}2h", header[70:74])
    vox_offset = int(struct.unpack(f"{endian}f", header[108:112])[0])
    ndim = max(0, min(dims[0], 7))
    if any(d <= 0 for d in dims[1 : ndim + 1]):
        raise InputError(
            f"{path}: header has a zero-length axis {dims[1 : ndim + 1]}; the image is empty, "
            "re-export it"
        )
    n_voxels = int(np.prod([max(d, 0) for d in dims[1 : ndim + 1]], dtype=np.int64))
    expected = vox_offset + n_voxels * bitpix // 8
    actual = _data_size(path)
    if actual is not None and actual < expected:
        raise InputError(
            f"{path}: header promises {expected} bytes but the file holds {actual}; "
            "the file is truncated, re-download or re-export it"
        )
    if finite and datatype in _FLOAT_TYPES:
        _check_finite(path, vox_offset, n_voxels, np.dtype(endian + _FLOAT_TYPES[datatype]))


def _data_size(path: Path) -> int | None:
    if not path.name.lower().endswith(".gz"):
        return path.stat().st_size
    size = path.stat().st_size
    if size < 18:
        return None
    with open(path, "rb") as fh:
        fh.seek(-4, 2)
        isize = struct.unpack("<I", fh.read(4))[0]  # uncompressed size mod 2**32
    return None if size > (1 << 31) else isize  # trailer is ambiguous beyond 4 GB


def _check_finite(path: Path, offset: int, n_voxels: int, dtype: np.dtype) -> None:
    bad = 0
    with _open(path) as fh:
        fh.seek(offset)
        remaining = n_voxels * dtype.itemsize
        while remaining > 0:
            buf = fh.read(min(_CHUNK, remaining))
            if not buf:
                break
            usable = len(buf) - len(buf) % dtype.itemsize
            values = np.frombuffer(buf[:usable], dtype=dtype)
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            remaining -= len(buf)
    if bad:
        raise InputError(
            f"{path}: {bad} voxels are NaN or infinite; fix or re-export the scan "
            "(e.g. replace them with the background value)"
        )
