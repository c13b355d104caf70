"""Checks on raw NIfTI files that SimpleITK does not make.

ITK reads a NIfTI file whose data is shorter than its header promises without complaint (a
`.nii.gz` cut off part-way comes back with the missing voxels as zeros), and turns NaN/inf
voxels into 0. Both hide broken inputs, so they are checked here on the raw bytes, in one
streamed pass that never holds more than a chunk in memory: a gzip stream is decompressed to
its end, which checks every member's CRC and length, and the bytes counted against the header;
float voxels are checked for NaN/inf in the same pass. The gzip trailer alone (ISIZE) cannot
tell: in a cut-off file it is whatever bytes sit at the cut, it holds only the last member's
size, and only modulo 2**32.

The header's geometry is checked too. A NIfTI-1 header holds two affines (qform, sform) and a
voxel size (pixdim); ITK keeps one affine and writes its masks with both set to it, so when the
header's own disagree, or the voxel size is not positive, a mask would silently sit elsewhere
than its scan in another tool (nibabel, FSL). Such headers are refused.
"""

from __future__ import annotations

import functools
import gzip
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO

import numpy as np

from voxseg.errors import InputError

_FLOAT_TYPES = {16: "f4", 64: "f8"}
_HEADER = 348  # NIfTI-1 header size
_HEADER2 = 540  # NIfTI-2 header size (ITK has no NIfTI-2 reader: only recognised)
_NIFTI_MAGIC = (b"n+1\0", b"ni1\0")
_ORIGIN_TOL = 1e-3  # mm between the qform's and the sform's origin
_MATRIX_TOL = 1e-4  # between their axis directions (unit vectors)
_SPACING_RTOL = 1e-4  # the sform's voxel size against pixdim
_GZIP_MAGIC = b"\x1f\x8b"
_IN_CHUNK = 1 << 18  # compressed bytes read at a time
_CHUNK = 1 << 22  # at most this many bytes decompressed (or read) at a time


@dataclass(frozen=True)
class _Header:
    """The fields of a NIfTI-1 header that voxseg checks."""

    dims: tuple[int, ...]  # dim[1..ndim]
    datatype: int
    bitpix: int
    vox_offset: int
    pixdim: tuple[float, ...]  # pixdim[0..7]; pixdim[0] is the qform's handedness (qfac)
    qform_code: int
    sform_code: int
    quatern: tuple[float, float, float]  # b, c, d
    qoffset: tuple[float, float, float]
    srow: tuple[float, ...]  # srow_x, srow_y, srow_z: 12 values
    endian: str
    nifti: bool  # the magic says NIfTI (not ANALYZE), so the q/sform fields mean what they say


@dataclass(frozen=True)
class _Layout:
    """Where the header says the voxels are."""

    start: int  # first voxel byte
    expected: int  # bytes the (decompressed) file must hold
    dtype: np.dtype | None  # float voxel type, checked for NaN/inf; None otherwise
    header: _Header


def check_nifti(path: Path, *, finite: bool = True) -> None:
    """Raise InputError if the file is damaged, its data short or (with `finite`) NaN/inf.

    A gzip file is always decompressed once, to its end (a cut-off or corrupt stream is
    refused; CRCs are checked); plain files need a pass only for the NaN check. The result is
    cached per unchanged file, so read_info then read_image pay for one pass. NIfTI-1 only for
    the size, NaN and geometry checks; the gzip check applies to any file.
    """
    compressed = _is_gzip(path)
    layout, total, nonfinite = _scan(path, _stamp(path), compressed, finite or compressed)
    if layout is None:
        return  # NIfTI-2, not NIfTI or an unreadable header: SimpleITK has the say
    if total < layout.expected:
        raise InputError(
            f"{path}: header promises {layout.expected} bytes but the file holds {total}; "
            "the file is truncated, re-download or re-export it"
        )
    if finite and nonfinite:
        raise InputError(
            f"{path}: {nonfinite} voxels are NaN or infinite; fix or re-export the scan "
            "(e.g. replace them with the background value)"
        )
    problem = _geometry_problem(layout.header)
    if problem:
        raise InputError(f"{path}: {problem}")


def is_nifti2(path: Path) -> bool:
    """True for a NIfTI-2 file (sizeof_hdr 540, either byte order), compressed or not."""
    try:
        opener = gzip.open if _is_gzip(path) else open
        with opener(path, "rb") as fh:
            head = fh.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return any(_sizeof_hdr(head, e) == _HEADER2 for e in "<>")


def _sizeof_hdr(raw: bytes, endian: str) -> int:
    return struct.unpack(f"{endian}i", raw[:4])[0] if len(raw) >= 4 else 0


def _is_gzip(path: Path) -> bool:
    """By content, not name: ITK reads an uncompressed file called `.nii.gz` as well."""
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _stamp(path: Path) -> tuple[int, ...]:
    """Identifies one version of a file (a rewrite or an atomic replace changes it)."""
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@functools.lru_cache(maxsize=4096)
def _scan(
    path: Path, stamp: tuple[int, ...], compressed: bool, count: bool
) -> tuple[_Layout | None, int, int]:
    """(layout, total bytes, NaN/inf voxels counted when `count`) in at most one pass."""
    with open(path, "rb") as fh:
        if compressed:
            chunks = _inflate(fh, path)
        else:  # the header alone first: read_info needs no more of a plain file
            chunks = chain([fh.read(_HEADER)], iter(lambda: fh.read(_CHUNK), b""))
        head = b""
        for chunk in chunks:
            head += chunk
            if len(head) >= _HEADER:
                break
        layout = _layout(path, head[:_HEADER])
        if not compressed and not (count and layout is not None and layout.dtype is not None):
            return layout, stamp[2], 0  # plain file, nothing to stream: its size is the size
        total, nonfinite = _count(chain([head], chunks), layout if count else None)
    return layout, total, nonfinite


def _inflate(fh: BinaryIO, path: Path) -> Iterator[bytes]:
    """Decompressed bytes of every gzip member, a bounded chunk at a time.

    Bytes after a member that do not start another one (zero padding) end the data, as in
    zlib's own reader that ITK uses; a stream that stops inside a member, or fails its
    CRC/length check, is refused.
    """
    data = fh.read(_IN_CHUNK)
    try:
        while data[:2] == _GZIP_MAGIC:
            member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while not member.eof:
                data = data or fh.read(_IN_CHUNK)
                out = member.decompress(data, _CHUNK)
                if not (data or out or member.eof):
                    raise InputError(
                        f"{path}: compressed data ends early (file truncated or damaged); "
                        "re-copy or re-export it"
                    )
                data = member.unconsumed_tail
                if out:
                    yield out
            data = member.unused_data
            if len(data) < 2:
                data += fh.read(_IN_CHUNK)
    except zlib.error as exc:
        raise InputError(
            f"{path}: compressed data is corrupt ({exc}); re-copy or re-export it"
        ) from exc


def _layout(path: Path, raw: bytes) -> _Layout | None:
    """The voxel data's place, size and float type from a NIfTI-1 header; None if not one."""
    header = _parse(raw)
    if header is None:
        return None
    if any(d <= 0 for d in header.dims):
        raise InputError(
            f"{path}: header has a zero-length axis {header.dims}; the image is empty, re-export it"
        )
    n_voxels = int(np.prod(header.dims, dtype=np.int64))
    float_type = _FLOAT_TYPES.get(header.datatype)
    return _Layout(
        start=max(header.vox_offset, _HEADER),
        expected=header.vox_offset + n_voxels * header.bitpix // 8,
        dtype=np.dtype(header.endian + float_type) if float_type else None,
        header=header,
    )


def _parse(raw: bytes) -> _Header | None:
    """A NIfTI-1 header in either byte order (told by sizeof_hdr); None if not one."""
    e = next((e for e in "<>" if _sizeof_hdr(raw, e) == _HEADER), None)
    if e is None or len(raw) < _HEADER:
        return None
    dims = struct.unpack(f"{e}8h", raw[40:56])
    return _Header(
        dims=dims[1 : max(0, min(dims[0], 7)) + 1],
        datatype=struct.unpack(f"{e}h", raw[70:72])[0],
        bitpix=struct.unpack(f"{e}h", raw[72:74])[0],
        vox_offset=int(struct.unpack(f"{e}f", raw[108:112])[0]),
        pixdim=struct.unpack(f"{e}8f", raw[76:108]),
        qform_code=struct.unpack(f"{e}h", raw[252:254])[0],
        sform_code=struct.unpack(f"{e}h", raw[254:256])[0],
        quatern=struct.unpack(f"{e}3f", raw[256:268]),
        qoffset=struct.unpack(f"{e}3f", raw[268:280]),
        srow=struct.unpack(f"{e}12f", raw[280:328]),
        endian=e,
        nifti=raw[344:348] in _NIFTI_MAGIC,
    )


def _geometry_problem(h: _Header) -> str | None:
    """Why ITK would read this header's geometry differently from other tools; None if it
    would not. Only the three spatial axes of a (3+)D image count."""
    if not h.nifti or len(h.dims) < 3:
        return None  # ANALYZE or 2D: refused elsewhere, or nothing to compare
    zooms = np.asarray(h.pixdim[1:4], dtype=np.float64)
    if not np.all(zooms > 0):  # NaN included
        return (
            f"header voxel size (pixdim) is {_mm(zooms)}, not positive; fix pixdim[1..3] "
            "in the header or re-export the scan"
        )
    if h.sform_code > 0:
        sform = np.asarray(h.srow, dtype=np.float64).reshape(3, 4)
        problem = _sform_problem(sform[:, :3], zooms)
        if problem:
            return problem
        if h.qform_code > 0:
            return _affines_problem(_qform(h), sform, zooms)
    return None


def _sform_problem(matrix: np.ndarray, zooms: np.ndarray) -> str | None:
    norms = np.linalg.norm(matrix, axis=0)
    if not np.allclose(norms, zooms, rtol=_SPACING_RTOL, atol=0):
        return (
            f"the sform's voxel size {_mm(norms)} disagrees with pixdim {_mm(zooms)}, so tools "
            "would size the image differently; re-save it with one of them fixed "
            "(nibabel: img.header.set_zooms or img.set_sform)"
        )
    return None  # a sheared sform ITK refuses itself (no orthonormal direction)


def _affines_problem(qform: np.ndarray, sform: np.ndarray, zooms: np.ndarray) -> str | None:
    """Compared as origin (mm) and axis directions (per mm of voxel size, so a coarse grid is
    held to the same angle as a fine one)."""
    shift = float(np.linalg.norm(qform[:, 3] - sform[:, 3]))
    turn = float(np.abs((qform[:, :3] - sform[:, :3]) / zooms).max())
    if shift <= _ORIGIN_TOL and turn <= _MATRIX_TOL:
        return None
    return (
        f"the header's sform and qform disagree (origins {shift:.3g} mm apart, axis directions "
        f"differ by up to {turn:.3g}), so tools would place the image differently; keep one: "
        "set the other's code to 0 or make them equal (nibabel: img.set_qform(img.get_sform()))"
    )


def _qform(h: _Header) -> np.ndarray:
    """The qform as a 3x4 matrix, computed the way nifti1_io (which ITK uses) does."""
    b, c, d = (float(v) for v in h.quatern)
    a = 1.0 - (b * b + c * c + d * d)
    if a < 1e-7:  # a 180 degree turn: the quaternion is renormalised with a = 0
        norm = np.sqrt(b * b + c * c + d * d)
        a, b, c, d = 0.0, b / norm, c / norm, d / norm
    else:
        a = np.sqrt(a)
    rotation = np.array(
        [
            [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
            [2 * (b * c + a * d), a * a + c * c - b * b - d * d, 2 * (c * d - a * b)],
            [2 * (b * d - a * c), 2 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ]
    )
    qfac = -1.0 if h.pixdim[0] < 0 else 1.0
    zooms = np.array([h.pixdim[1], h.pixdim[2], h.pixdim[3] * qfac], dtype=np.float64)
    return np.column_stack([rotation * zooms, np.asarray(h.qoffset, dtype=np.float64)])


def _mm(values: np.ndarray) -> str:
    return " x ".join(f"{v:.6g}" for v in values) + " mm"


def _count(chunks: Iterable[bytes], layout: _Layout | None) -> tuple[int, int]:
    """Total bytes, and NaN/inf voxels in the data range when `layout` has a float type."""
    total = nonfinite = 0
    dtype = layout.dtype if layout is not None else None
    carry = b""  # a voxel split across two chunks
    for chunk in chunks:
        if dtype is not None:
            end = layout.expected - total
            lo, hi = max(layout.start - total, 0), min(end, len(chunk))
            if lo < hi:
                piece = carry + chunk[lo:hi] if carry else memoryview(chunk)[lo:hi]
                usable = len(piece) - len(piece) % dtype.itemsize
                nonfinite += _nonfinite(piece[:usable], dtype)
                carry = bytes(piece[usable:])
        total += len(chunk)
    return total, nonfinite


def _nonfinite(buf: bytes | memoryview, dtype: np.dtype) -> int:
    values = np.frombuffer(buf, dtype=dtype)
    return int(values.size - np.count_nonzero(np.isfinite(values)))
