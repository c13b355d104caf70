"""What a model segments: one binary target, or several label regions from one network.

A region is a set of label values. Binary training is one region (the `--foreground` values,
or every non-zero label). Region-based training (nnU-Net's answer to KiTS) gives the network
one sigmoid output per region, e.g. kidney+tumour {1, 2} and tumour {2}; nested regions let
the prediction keep every tumour voxel inside kidney+tumour.

On the network grid a target is stored as a bit mask: bit r is set where region r holds.
With one region that is exactly the binary {0, 1} target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxseg.errors import ConfigError

MAX_REGIONS = 8
"""Regions fit in the bits of a uint8 target."""


@dataclass(frozen=True)
class Region:
    name: str
    labels: tuple[int, ...] | None
    """Label values inside the region; None means every non-zero label."""

    def mask(self, label: np.ndarray) -> np.ndarray:
        """bool: where `label` lies in this region."""
        return label != 0 if self.labels is None else np.isin(label, self.labels)


NON_ZERO = (Region("foreground", None),)
"""The default binary target: every non-zero label."""
KITS = (Region("kidney+tumour", (1, 2)), Region("tumour", (2,)))
"""The regions KiTS19 is scored on (label 1 kidney, 2 tumour)."""


def label_words(labels: tuple[int, ...]) -> str:
    """`label 2` or `labels 1,2`."""
    return ("label " if len(labels) == 1 else "labels ") + ",".join(map(str, labels))


def parse_regions(text: str) -> tuple[Region, ...]:
    """`kits`, `1,2;2` or `kidney=1,2;tumour=2` -> regions, largest first.

    Regions are ordered from the outermost to the innermost, and each must own a label value
    that no later region has (the value its voxels get in a predicted label map).
    """
    option = f"--regions {text!r}"
    if text.strip().lower() == "kits":
        return KITS
    regions = []
    for part in text.split(";"):
        name, _, values = part.rpartition("=")
        labels = parse_label_values(values)
        if not labels:
            raise ConfigError(
                f"{option}: give regions as positive label values separated by ';', "
                "e.g. '1,2;2' or 'kidney=1,2;tumour=2' (or 'kits')"
            )
        regions.append(Region(name.strip() or label_words(labels), labels))
    return check_regions(tuple(regions), option)


def parse_foreground(text: str | None) -> tuple[int, ...] | None:
    """`--foreground`: '2' or '1,2' -> label values; None (every non-zero label) for no value,
    'all' or 'nonzero'."""
    if text is None or text.strip().lower() in ("", "all", "nonzero"):
        return None
    values = parse_label_values(text)
    if not values:
        raise ConfigError(
            f"--foreground {text!r}: give positive label values like '2' or '1,2' (0 is background)"
        )
    return values


def parse_label_values(text: str) -> tuple[int, ...]:
    """'1,2', '1 2' or '2, 1' -> (1, 2); () when any part is not a positive integer, so the
    caller names its own option in the error (--foreground and --regions share this)."""
    try:
        values = {int(v) for v in text.replace(",", " ").split()}
    except ValueError:
        return ()
    return tuple(sorted(values)) if values and min(values) >= 1 else ()


def check_regions(regions: tuple[Region, ...], source: str) -> tuple[Region, ...]:
    """Refuse region sets a label map cannot represent; return them unchanged."""
    if not 1 <= len(regions) <= MAX_REGIONS:
        raise ConfigError(f"{source}: give 1 to {MAX_REGIONS} regions")
    if len({r.name for r in regions}) != len(regions):
        raise ConfigError(f"{source}: region names must differ")
    for k, region in enumerate(regions):
        if region.labels is not None and not own_labels(regions, k):
            raise ConfigError(
                f"{source}: region {region.name!r} has no label value of its own; order regions "
                "from the largest to the smallest, e.g. '1,2;2'"
            )
    return regions


def own_labels(regions: tuple[Region, ...], k: int) -> tuple[int, ...]:
    """Values of region k that no later region contains."""
    later = {v for r in regions[k + 1 :] for v in (r.labels or ())}
    return tuple(v for v in regions[k].labels or () if v not in later)


def parents(regions: tuple[Region, ...], k: int) -> tuple[int, ...]:
    """Earlier regions that contain region k (kidney+tumour for tumour)."""
    inner = set(regions[k].labels or ())
    return tuple(
        i for i in range(k) if regions[i].labels is None or inner <= set(regions[i].labels)
    )


def encode(label: np.ndarray, regions: tuple[Region, ...]) -> np.ndarray:
    """Label map -> uint8 bit mask (bit r: region r)."""
    out = np.zeros(label.shape, dtype=np.uint8)
    for bit, region in enumerate(regions):
        out |= region.mask(label).astype(np.uint8) << bit
    return out


def channels(bits: np.ndarray, n: int) -> np.ndarray:
    """Bit mask (...) -> float32 (n, ...) with one {0, 1} channel per region."""
    shifts = np.arange(n, dtype=np.uint8).reshape((n,) + (1,) * bits.ndim)
    return ((np.asarray(bits)[None] >> shifts) & 1).astype(np.float32)


def nest(masks: np.ndarray, regions: tuple[Region, ...]) -> np.ndarray:
    """Per-region bool masks (R, ...) with each region clipped to the regions containing it,
    so a predicted tumour never lies outside the predicted kidney+tumour."""
    out = np.array(masks, dtype=bool)
    for k in range(len(regions)):
        for i in parents(regions, k):
            out[k] &= out[i]
    return out


def as_written(regions: tuple[Region, ...]) -> tuple[Region, ...]:
    """How each target region reads from a predicted file: one region is a {0, 1} mask (any
    non-zero value), several are a label map of their own values (KiTS: 1 kidney, 2 tumour)."""
    return (Region(regions[0].name, None),) if len(regions) == 1 else regions


def label_map(masks: np.ndarray, regions: tuple[Region, ...]) -> np.ndarray:
    """Nested per-region masks (R, ...) -> uint8 file values: a voxel gets the own label value
    of the innermost region holding it (KiTS: 1 kidney, 2 tumour); one region gives a {0, 1}
    mask (`as_written`)."""
    written = as_written(regions)
    out = np.zeros(masks.shape[1:], dtype=np.uint8)
    for k, mask in enumerate(nest(masks, regions)):
        out[mask] = own_labels(written, k)[0] if written[k].labels else 1
    return out


def target_values(regions: tuple[Region, ...]) -> tuple[int, ...] | None:
    """Every label value some region holds; None when a region takes every non-zero label."""
    if any(r.labels is None for r in regions):
        return None
    return tuple(sorted({v for r in regions for v in r.labels or ()}))


BINARY_NOTE = "voxseg binary mask"
_LABEL_MAP_NOTE = "voxseg label map "


def file_note(regions: tuple[Region, ...]) -> str:
    """What a predicted file holds, for its header: a binary mask (one region) or a label map
    of `regions` (`voxseg label map 1,2;2`), so evaluation can tell them apart."""
    if len(regions) == 1:
        return BINARY_NOTE
    return _LABEL_MAP_NOTE + ";".join(",".join(map(str, r.labels or ())) for r in regions)


def note_regions(note: str) -> tuple[tuple[int, ...], ...] | None:
    """The regions' label values a label-map note names; None for any other note."""
    if not note.startswith(_LABEL_MAP_NOTE):
        return None
    try:
        return tuple(
            tuple(int(v) for v in part.split(",") if v)
            for part in note[len(_LABEL_MAP_NOTE) :].split(";")
        )
    except ValueError:
        return None


def describe(regions: tuple[Region, ...]) -> str:
    """One line: `kidney+tumour (labels 1,2); tumour (label 2)`."""
    return "; ".join(
        f"{r.name} ({'every non-zero label' if r.labels is None else label_words(r.labels)})"
        for r in regions
    )
