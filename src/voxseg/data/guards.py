"""Refuse work that cannot fit in memory before allocating it, with a way to override.

A corrupted header can promise a 100000^3 volume; a real 512x512x1000 scan needs a few GB.
The estimate is checked against the memory available now (or `VOXSEG_MEMORY_LIMIT_GB`).
"""

from __future__ import annotations

import os
from pathlib import Path

from voxseg.data.io import ImageInfo
from voxseg.errors import ConfigError, InputError

ENV_LIMIT = "VOXSEG_MEMORY_LIMIT_GB"
_ITEMSIZE = {
    "uint8": 1,
    "int8": 1,
    "uint16": 2,
    "int16": 2,
    "float32": 4,
    "int32": 4,
    "uint32": 4,
    "float64": 8,
    "int64": 8,
    "uint64": 8,
}


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def estimate_bytes(info: ImageInfo) -> int:
    """Peak bytes to read and preprocess one scan: the file's voxels twice (ITK image and
    NumPy copy), a float32 working copy and the uint8 mask."""
    voxels = 1
    for s in info.geometry.shape:
        voxels *= s
    return voxels * (2 * _ITEMSIZE.get(info.dtype, 8) + 4 + 1)


def memory_limit() -> float | None:
    """Bytes voxseg may use: `VOXSEG_MEMORY_LIMIT_GB` if set, else what is available now."""
    value = os.environ.get(ENV_LIMIT)
    if not value:
        return available_bytes()
    try:
        limit = float(value)
    except ValueError:
        limit = -1.0
    if not limit > 0 or limit == float("inf"):
        raise ConfigError(f"{ENV_LIMIT}={value!r}: give a number of GB, e.g. {ENV_LIMIT}=16")
    return limit * 2**30


def check_memory(info: ImageInfo) -> None:
    need = estimate_bytes(info)
    limit = memory_limit()
    if limit is not None and need > limit:
        raise InputError(
            f"{info.path}: a {'x'.join(map(str, info.geometry.shape))} {info.dtype} volume needs "
            f"~{need / 2**30:.1f} GB but {limit / 2**30:.1f} GB is available; free memory, or set "
            f"{ENV_LIMIT}=<GB> to override if the header is right"
        )
