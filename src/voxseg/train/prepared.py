"""Prepared (preprocessed, labelled) cases for training, cached on disk as memory-mapped arrays,
so repeated training never re-reads NIfTI.

A cache entry is keyed by the source files' identity (resolved path, size, mtime) and the
preprocessing settings; change either and the case is prepared again. Entries are written to
a temporary folder and renamed into place, so an interrupted run never leaves a half entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from voxseg.config import PreprocessConfig
from voxseg.data.checks import check_pair, label_values
from voxseg.data.discovery import Case
from voxseg.data.guards import check_memory
from voxseg.data.io import read_image, read_info
from voxseg.preprocess import PreprocessRecord, preprocess_image, preprocess_label
from voxseg.regions import Region, target_values

CACHE_VERSION = 2
MAX_FG_SAMPLES = 20_000
"""Foreground voxel positions kept per case and region for foreground-centred sampling."""


@dataclass(frozen=True)
class PreparedCase:
    case_id: str
    image: np.ndarray
    """Normalised float32 network input, canonical layout (memory-mapped when cached)."""
    label: np.ndarray
    """uint8 region bit mask on the same grid ({0, 1} for a binary target)."""
    foreground: tuple[np.ndarray, ...]
    """Per region, (n, 3) int32 positions of (a sample of) its voxels."""
    record: PreprocessRecord


def default_cache_dir() -> Path:
    env = os.environ.get("VOXSEG_CACHE")
    if env:
        return Path(env)
    return (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "voxseg" / "preprocessed"
    )


_ENTRY = re.compile(r"^\.?.+-[0-9a-f]{20}(\..*)?$")
"""A cache entry `<case_id>-<key>` (or the temporary folder of one being stored)."""


@dataclass(frozen=True)
class CacheUsage:
    folder: Path
    entries: int
    bytes: int


def _entries(cache_dir: Path) -> list[Path]:
    """voxseg's entries in `cache_dir` (only those: the folder may hold other things)."""
    try:
        return [p for p in cache_dir.iterdir() if p.is_dir() and _ENTRY.match(p.name)]
    except OSError:
        return []


def cache_usage(cache_dir: Path | None = None) -> CacheUsage:
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    entries = _entries(folder)
    size = sum(f.stat().st_size for e in entries for f in e.iterdir() if f.is_file())
    return CacheUsage(folder, len(entries), size)


def clear_cache(cache_dir: Path | None = None) -> CacheUsage:
    """Delete voxseg's entries from the cache folder; returns what was there."""
    usage = cache_usage(cache_dir)
    for entry in _entries(usage.folder):
        shutil.rmtree(entry, ignore_errors=True)
    return usage


def _identity(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_key(case: Case, cfg: PreprocessConfig, regions: tuple[Region, ...]) -> str:
    blob = json.dumps(
        {
            "v": CACHE_VERSION,
            "image": _identity(case.image),
            "label": _identity(case.label) if case.label else None,
            "preprocess": asdict(cfg),
            "regions": [asdict(r) for r in regions],
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def foreground_positions(
    target: np.ndarray, n_regions: int = 1, seed: int = 0
) -> tuple[np.ndarray, ...]:
    """Per region (bit of `target`), a sample of its voxel positions."""
    out = []
    for bit in range(n_regions):
        pos = np.argwhere(target & (1 << bit)).astype(np.int32)
        if len(pos) > MAX_FG_SAMPLES:
            rng = np.random.default_rng(seed)
            pos = pos[rng.choice(len(pos), MAX_FG_SAMPLES, replace=False)]
        out.append(pos)
    return tuple(out)


def prepare_case(case: Case, cfg: PreprocessConfig, regions: tuple[Region, ...]) -> PreparedCase:
    """Read, check and preprocess one labelled case (no cache)."""
    if case.label is None:
        raise ValueError(f"{case.case_id}: prepare_case needs a labelled case")
    check_memory(read_info(case.image))
    image, geometry = read_image(case.image)
    label, lgeom = read_image(case.label)
    check_pair(geometry, lgeom, case.image, case.label)
    label_values(label, case.label, target_values(regions))
    net_input, record = preprocess_image(image, geometry, cfg)
    del image
    target = preprocess_label(label, record, regions)
    positions = foreground_positions(target, len(regions))
    return PreparedCase(case.case_id, net_input, target, positions, record)


def load_or_prepare(
    case: Case,
    cfg: PreprocessConfig,
    regions: tuple[Region, ...],
    cache_dir: Path | None,
) -> PreparedCase:
    """The cached case if present, else prepare it (and store it when `cache_dir` is set)."""
    if cache_dir is None:
        return prepare_case(case, cfg, regions)
    entry = Path(cache_dir) / f"{case.case_id}-{cache_key(case, cfg, regions)}"
    if (entry / "record.json").is_file():
        try:
            return _load(entry, case.case_id)
        except (OSError, ValueError, KeyError):
            shutil.rmtree(entry, ignore_errors=True)  # damaged entry: rebuild it
    prepared = prepare_case(case, cfg, regions)
    _store(prepared, entry)
    return _load(entry, case.case_id)


def _store(prepared: PreparedCase, entry: Path) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        np.save(tmp / "image.npy", np.ascontiguousarray(prepared.image, dtype=np.float32))
        np.save(tmp / "label.npy", np.ascontiguousarray(prepared.label, dtype=np.uint8))
        for r, positions in enumerate(prepared.foreground):
            np.save(tmp / f"foreground-{r}.npy", positions)
        (tmp / "record.json").write_text(json.dumps(prepared.record.to_dict()))
        try:
            os.replace(tmp, entry)
        except OSError:  # another process stored it first
            if not (entry / "record.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load(entry: Path, case_id: str) -> PreparedCase:
    record = PreprocessRecord.from_dict(
        json.loads((entry / "record.json").read_text(encoding="utf-8"))
    )
    image = np.load(entry / "image.npy", mmap_mode="r")
    label = np.load(entry / "label.npy", mmap_mode="r")
    if image.shape != record.shape or label.shape != record.shape:
        raise ValueError("cache entry does not match its record")
    positions = []
    while (entry / f"foreground-{len(positions)}.npy").is_file():
        positions.append(np.load(entry / f"foreground-{len(positions)}.npy"))
    if not positions:
        raise ValueError("cache entry has no foreground positions")
    return PreparedCase(case_id, image, label, tuple(positions), record)
