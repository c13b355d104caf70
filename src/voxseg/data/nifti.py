"""Checks on raw NIfTI files that SimpleITK does not make.

ITK reads a NIfTI file whose data is shorter than its header promises without complaint (a
`.nii.gz` cut off part-way comes back with the missing voxels as zeros), and turns NaN/inf
voxels into 0. Both hide broken inputs, so they are checked here on the raw bytes, in one
streamed pass that never holds more than a chunk in memory: a gzip stream is decompressed to
its end, which checks every member's CRC and length, and the bytes counted against the header;
float voxels are checked for NaN/inf in the same pass. The gzip trailer alone (ISIZE) cannot
tell: in a cut-off file it is whatever bytes sit at the cut, it holds only the last member's
size, and only modulo 2**32.
"""

from __future__ import annotations

import functools
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
_GZIP_MAGIC = b"\x1f\x8b"
_IN_CHUNK = 1 << 18  # compressed bytes read at a time
_CHUNK = 1 << 22  # at most this many bytes decompressed (or read) at a time


@dataclass(frozen=True)
class _Layout:
    """Where the header says the voxels are."""

    start: int  # first voxel byte
    expected: int  # bytes the (decompressed) file must hold
    dtype: np.dtype | None  # float voxel type, checked for NaN/inf; None otherwise


def check_nifti(path: Path, *, finite: bool = True) -> None:
    """Raise InputError if the file is damaged, its data short or (with `finite`) NaN/inf.

    A gzip file is always decompressed once, to its end (a cut-off or corrupt stream is
    refused; CRCs are checked); plain files need a pass only for the NaN check. The result is
    cached per unchanged file, so read_info then read_image pay for one pass. NIfTI-1 only for
    the size and NaN checks; the gzip check applies to any file.
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


def _layout(path: Path, header: bytes) -> _Layout | None:
    """The voxel data's place, size and float type from a NIfTI-1 header; None if not one."""
    if len(header) < _HEADER:
        return None
    for endian in "<>":
        if struct.unpack(f"{endian}i", header[:4])[0] == _HEADER:
            break
    else:
        return None
    dims = struct.unpack(f"{endian}8h", header[40:56])
    datatype, bitpix = struct.unpack(f"{endian}2h", header[70:74])
    vox_offset = int(struct.unpack(f"{endian}f", header[108:112])[0])
    ndim = max(0, min(dims[0], 7))
    if any(d <= 0 for d in dims[1 : ndim + 1]):
        raise InputError(
            f"{path}: header has a zero-length axis {dims[1 : ndim + 1]}; the image is empty, "
            "re-export it"
        )
    n_voxels = int(np.prod(dims[1 : ndim + 1], dtype=np.int64))
    float_type = _FLOAT_TYPES.get(datatype)
    return _Layout(
        start=max(vox_offset, _HEADER),
        expected=vox_offset + n_voxels * bitpix // 8,
        dtype=np.dtype(endian + float_type) if float_type else None,
    )


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
