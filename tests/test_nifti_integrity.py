"""Damaged NIfTI files are refused before their bytes are used as data; valid ones are not.

ITK reads a `.nii.gz` cut off anywhere after its header with the missing voxels as zeros, so
voxseg.data.nifti decompresses the whole stream (CRC and length checked) and counts its bytes
against the header. Tiny volumes, written for real.
"""

from __future__ import annotations

import gzip
from itertools import repeat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from voxseg.data import nifti
from voxseg.data.io import read_image, read_info, write_image
from voxseg.errors import InputError
from voxseg.geometry import Geometry

SHAPE = (24, 28, 32)


@pytest.fixture(autouse=True)
def _fresh_cache():
    nifti._scan.cache_clear()
    yield
    nifti._scan.cache_clear()


def _volume(dtype: str) -> np.ndarray:
    """Noisy enough that the compressed stream is long and a cut lands in the voxel data."""
    rng = np.random.default_rng(0)
    if dtype == "uint8":
        return rng.integers(0, 3, SHAPE).astype(np.uint8)
    if dtype == "int16":
        return rng.integers(-1000, 1500, SHAPE).astype(np.int16)
    return rng.normal(0, 100, SHAPE).astype(np.float32)


def _write(path: Path, array: np.ndarray) -> Path:
    geometry = Geometry(
        shape=SHAPE,
        spacing=(2.5, 1.2, 0.8),
        origin=(10.0, -20.0, 30.0),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    return write_image(path, array, geometry, compress=path.name.endswith(".gz"))


def _refused(path: Path, match: str) -> None:
    """read_image and read_info both raise a one-line InputError naming the file."""
    for read in (read_image, read_info):
        with pytest.raises(InputError) as info:
            read(path)
        message = str(info.value)
        assert str(path) in message and "\n" not in message
    with pytest.raises(InputError, match=match):
        nifti.check_nifti(path, finite=False)


def _reads_back(path: Path, expected: np.ndarray) -> None:
    array, geometry = read_image(path)
    assert array.dtype == expected.dtype
    np.testing.assert_array_equal(array, expected)
    assert read_info(path).geometry.shape == SHAPE


@pytest.mark.parametrize("dtype", ["int16", "uint8"])  # an image and a label
@pytest.mark.parametrize("cut", [0.5, 0.9, 0.99, 1, 4, 8])  # a fraction kept, or bytes cut off
def test_truncated_gzip_is_refused(tmp_path: Path, dtype: str, cut: float):
    data = _write(tmp_path / "good.nii.gz", _volume(dtype)).read_bytes()
    keep = int(len(data) * cut) if cut < 1 else len(data) - int(cut)
    bad = tmp_path / "cut.nii.gz"
    bad.write_bytes(data[:keep])
    _refused(bad, "compressed data ends early")


@pytest.mark.parametrize("where", [0.5, 0.75, -8, -2])  # deflate data, CRC, ISIZE
def test_corrupt_gzip_is_refused(tmp_path: Path, where: float):
    data = bytearray(_write(tmp_path / "good.nii.gz", _volume("int16")).read_bytes())
    data[int(len(data) * where) if where > 0 else int(where)] ^= 0x55
    bad = tmp_path / "flipped.nii.gz"
    bad.write_bytes(bytes(data))
    _refused(bad, "compressed data is corrupt")


def test_complete_gzip_with_short_data_is_refused(tmp_path: Path):
    raw = gzip.decompress(_write(tmp_path / "good.nii.gz", _volume("int16")).read_bytes())
    bad = tmp_path / "short.nii.gz"
    bad.write_bytes(gzip.compress(raw[:-100]))
    _refused(bad, "header promises")


def test_file_changed_after_a_check_is_checked_again(tmp_path: Path):
    path = _write(tmp_path / "scan.nii.gz", _volume("int16"))
    data = path.read_bytes()
    read_image(path)
    path.write_bytes(data[: len(data) // 2])  # same file, rewritten in place
    _refused(path, "ends early")


@pytest.mark.parametrize("dtype", ["int16", "uint8", "float32"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_valid_files_read_back(tmp_path: Path, dtype: str, suffix: str):
    array = _volume(dtype)
    _reads_back(_write(tmp_path / f"scan{suffix}", array), array)


def _plain_bytes(tmp_path: Path, array: np.ndarray) -> bytes:
    return _write(tmp_path / "plain.nii", array).read_bytes()


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_multi_member_gzip_reads_back(tmp_path: Path, dtype: str):
    """bgzip-style: the last member's ISIZE is not the total, yet ITK and nibabel read it."""
    array = _volume(dtype)
    raw = _plain_bytes(tmp_path, array)
    path = tmp_path / "two.nii.gz"
    path.write_bytes(gzip.compress(raw[:5001]) + gzip.compress(raw[5001:]))
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj).T, array)
    _reads_back(path, array)


@pytest.mark.parametrize("tail", [b"\0" * 1024, b"\0", b"not gzip"])
def test_bytes_after_the_stream_read_back(tmp_path: Path, tail: bytes):
    """Zero padding, or any bytes that do not start a gzip member: zlib's reader (ITK's) and
    nibabel stop there, and the data before them is complete and CRC-checked."""
    array = _volume("int16")
    path = tmp_path / "padded.nii.gz"
    path.write_bytes(gzip.compress(_plain_bytes(tmp_path, array)) + tail)
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj).T, array)
    _reads_back(path, array)


def test_uncompressed_file_named_gz_reads_back(tmp_path: Path):
    """ITK reads it by content, so the check goes by content too, not by the name."""
    array = _volume("int16")
    path = tmp_path / "not_compressed.nii.gz"
    path.write_bytes(_plain_bytes(tmp_path, array))
    _reads_back(path, array)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nan_is_refused_by_read_image_not_read_info(tmp_path: Path, suffix: str):
    array = _volume("float32")
    array[3, 4, 5] = np.nan
    array[-1, -1, -1] = -np.inf
    path = tmp_path / f"nan{suffix}"
    nib.save(nib.Nifti1Image(array.T, np.eye(4)), path)  # SimpleITK's writer would zero them
    assert read_info(path).geometry.shape == SHAPE  # header only; fills the cache first
    with pytest.raises(InputError, match="2 voxels are NaN or infinite"):
        read_image(path)


def test_streaming_is_bounded_and_exact_across_chunk_and_member_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Tiny, odd-sized chunks: every piece stays under the bound, voxels split between
    chunks are still checked, and the total over three members is exact."""
    monkeypatch.setattr(nifti, "_CHUNK", 1001)
    monkeypatch.setattr(nifti, "_IN_CHUNK", 97)
    array = _volume("float32")
    array[0, 0, 0] = np.nan
    array[-1, -1, -1] = np.inf
    raw = nib.Nifti1Image(array.T, np.eye(4)).to_bytes()
    path = tmp_path / "three.nii.gz"
    path.write_bytes(b"".join(gzip.compress(raw[i : i + 7000]) for i in range(0, len(raw), 7000)))
    with open(path, "rb") as fh:
        sizes = [len(chunk) for chunk in nifti._inflate(fh, path)]
    assert max(sizes) <= 1001 and sum(sizes) == len(raw)
    layout, total, nonfinite = nifti._scan(path, nifti._stamp(path), True, True)
    assert (total, nonfinite) == (len(raw), 2) and layout.expected == len(raw)


def test_sizes_beyond_4_gib_are_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A > 4 GiB volume (its gzip ISIZE wraps modulo 2**32): header arithmetic and the byte
    count stay exact. The decompressor is replaced by 64 MiB views of one buffer."""
    shape = (2048, 2048, 520)  # int16: 4.06 GiB of voxels
    header = nib.Nifti1Image(np.zeros((1, 1, 1), np.int16), np.eye(4)).header
    header.set_data_shape(shape)
    header.set_data_offset(352)
    header_bytes = header.binaryblock + b"\0" * 4
    expected = 352 + int(np.prod(shape)) * 2
    assert expected > 1 << 32
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(header_bytes))
    block = memoryview(bytes(1 << 26))

    def fake_inflate(missing: int):
        n_blocks, rest = divmod(expected - 352 - missing, len(block))

        def inflate(fh, path):
            yield header_bytes
            yield from repeat(block, n_blocks)
            yield block[:rest]

        return inflate

    monkeypatch.setattr(nifti, "_inflate", fake_inflate(0))
    nifti.check_nifti(path)
    nifti._scan.cache_clear()
    monkeypatch.setattr(nifti, "_inflate", fake_inflate(2))
    with pytest.raises(InputError, match=f"promises {expected} bytes but the file holds"):
        nifti.check_nifti(path)
