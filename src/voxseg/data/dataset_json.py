"""A dataset's own description, `dataset.json` (Medical Segmentation Decathlon and nnU-Net v2),
read instead of guessing from file names: label names, channels, file ending."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from voxseg.errors import InputError

NAME = "dataset.json"


@dataclass(frozen=True)
class DatasetJson:
    labels: dict[int, str] = field(default_factory=dict)
    """Label value -> name (background included when the file lists it)."""
    channels: tuple[str, ...] = ()
    file_ending: str | None = None
    """nnU-Net v2's `file_ending` (e.g. ".nii.gz"); None when not given."""


def _labels(raw: object, path: Path) -> dict[int, str]:
    """MSD writes {"0": "background", ...}; nnU-Net v2 {"background": 0, ...} (a value may be a
    list of labels for a region, which names no single value and is skipped)."""
    if not isinstance(raw, dict):
        return {}
    out: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[value] = str(key)
        elif isinstance(value, str) and str(key).lstrip("-").isdigit():
            out[int(key)] = value
        elif not isinstance(value, list):
            raise InputError(f"{path}: label entry {key!r}: {value!r} is not a label value")
    return dict(sorted(out.items()))


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
    return DatasetJson(_labels(raw.get("labels"), path), names, ending if ending else None)
