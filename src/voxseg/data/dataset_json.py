"""A dataset's own description, `dataset.json` (Medical Segmentation Decathlon and nnU-Net v2),
read instead of guessing from file names: label names, channels, file ending."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from voxseg.errors import ConfigError, InputError
from voxseg.regions import Region, check_regions, own_labels

NAME = "dataset.json"


@dataclass(frozen=True)
class DatasetJson:
    labels: dict[int, str] = field(default_factory=dict)
    """Label value -> name (background included when the file lists it)."""
    channels: tuple[str, ...] = ()
    file_ending: str | None = None
    """nnU-Net v2's `file_ending` (e.g. ".nii.gz"); None when not given."""
    regions: tuple[Region, ...] = ()
    """nnU-Net v2's region-based labels (`"kidney": [1, 2], "tumor": 2` with
    `regions_class_order`), outermost first; empty when the file declares none."""


def _entries(raw: object, path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """MSD writes {"0": "background", ...}; nnU-Net v2 {"background": 0, ...}, where a value
    may be a list of labels: a region (`"kidney": [1, 2]`). Each entry as (name, values)."""
    if not isinstance(raw, dict):
        return []
    out = []
    for key, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out.append((str(key), (value,)))
        elif isinstance(value, str) and str(key).lstrip("-").isdigit():
            out.append((value, (int(key),)))
        elif (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            out.append((str(key), tuple(sorted(set(value)))))
        else:
            raise InputError(f"{path}: label entry {key!r}: {value!r} is not a label value")
    return out


def _regions(entries: list[tuple[str, tuple[int, ...]]], path: Path) -> tuple[Region, ...]:
    """The declared regions, outermost (most labels) first, when any entry is a list."""
    found = [Region(n, v) for n, v in entries if 0 not in v]
    if not any(len(r.labels or ()) > 1 for r in found):
        return ()
    ordered = tuple(sorted(found, key=lambda r: -len(r.labels or ())))
    try:
        return check_regions(ordered, f"{path} (labels)")
    except ConfigError as exc:
        raise InputError(str(exc)) from None


def _names(entries, regions: tuple[Region, ...]) -> dict[int, str]:
    """Label value -> name; with regions, each value takes the name of the innermost region
    that owns it (KiTS: 1 kidney, 2 tumor)."""
    names = {v[0]: n for n, v in entries if len(v) == 1}
    for k, region in enumerate(regions):
        for value in own_labels(regions, k):
            names[value] = region.name
    return dict(sorted(names.items()))


def read_dataset_json(root: Path) -> DatasetJson | None:
    """The dataset.json under `root`, or None; InputError if it is unusable or multi-channel."""
    path = Path(root) / NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not readable JSON ({exc}); fix or remove it") from exc
    if not isinstance(raw, dict):
        raise InputError(f"{path}: not a JSON object; fix or remove it")
    channels = raw.get("channel_names", raw.get("modality", {}))
    names = tuple(str(v) for _, v in sorted(channels.items())) if isinstance(channels, dict) else ()
    if len(names) > 1:
        raise InputError(
            f"{path}: {len(names)} channels ({', '.join(names)}); voxseg segments single-channel "
            "scans: keep one channel (e.g. the CT) and list only it"
        )
    ending = raw.get("file_ending")
    entries = _entries(raw.get("labels"), path)
    regions = _regions(entries, path)
    return DatasetJson(_names(entries, regions), names, ending if ending else None, regions)
