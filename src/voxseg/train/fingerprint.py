"""Measure the dataset once: spacings, shapes and foreground intensities, as nnU-Net's
fingerprint does. The planner reads only this record, never the files, so a plan can be
tested exactly and reproduced on another machine from `fingerprint.json`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from voxseg.data.checks import check_pair, label_values
from voxseg.data.discovery import Case
from voxseg.data.io import read_image, read_info

INTENSITY_CASES = 8
"""Cases sampled for the foreground intensity statistics."""
SAMPLES_PER_CASE = 20_000
MIN_LABEL_SAMPLES = 100
"""A label with fewer sampled voxels is recorded but does not shape the window: a few stray
or partial-volume voxels would otherwise stretch it (unless no label has this many)."""


@dataclass(frozen=True)
class LabelIntensity:
    """HU of one label value over the sampled cases."""

    value: int
    p005: float
    p995: float
    mean: float
    std: float
    samples: int


@dataclass(frozen=True)
class Intensity:
    """Foreground HU over a sample of cases: the window covers every label value's 0.5-99.5
    percentiles, and mean/std weigh the values equally.

    Pooling all foreground voxels (nnU-Net's way) lets the large label decide: a KiTS tumour
    is a few % of the kidney, so its necrotic low-HU part fell below the window and was
    clipped onto fat (17 % of tumour voxels in our KiTS-like data).
    """

    p005: float
    p995: float
    mean: float
    std: float
    by_label: tuple[LabelIntensity, ...] = ()

    @classmethod
    def from_labels(cls, by_label: Sequence[LabelIntensity]) -> Intensity:
        used = [b for b in by_label if b.samples >= MIN_LABEL_SAMPLES] or list(by_label)
        mean = float(np.mean([b.mean for b in used]))
        # Variance of an equal-weight mixture: mean within-label variance + spread of the means.
        var = float(np.mean([b.std**2 + (b.mean - mean) ** 2 for b in used]))
        return cls(
            min(b.p005 for b in used), max(b.p995 for b in used), mean, var**0.5, tuple(by_label)
        )


@dataclass(frozen=True)
class Fingerprint:
    case_ids: tuple[str, ...]
    shapes: tuple[tuple[int, int, int], ...]
    """Per case, canonical order (superior, posterior, left)."""
    spacings: tuple[tuple[float, float, float], ...]
    """Per case, mm, canonical order."""
    intensity: Intensity | None
    """None when the sampled cases had no foreground."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Fingerprint:
        intensity = None
        if d.get("intensity"):
            i = dict(d["intensity"])
            by_label = tuple(LabelIntensity(**b) for b in i.pop("by_label", ()))
            intensity = Intensity(**i, by_label=by_label)
        return cls(
            tuple(d["case_ids"]),
            tuple(tuple(int(v) for v in s) for s in d["shapes"]),
            tuple(tuple(float(v) for v in s) for s in d["spacings"]),
            intensity,
        )


def intensity_stats(
    cases: Sequence[Case], foreground: tuple[int, ...] | None, seed: int = 0
) -> Intensity | None:
    rng = np.random.default_rng(seed)
    samples: dict[int, list[np.ndarray]] = {}
    for case in list(cases)[:INTENSITY_CASES]:
        image, geometry = read_image(case.image)
        label, label_geometry = read_image(case.label)
        check_pair(geometry, label_geometry, case.image, case.label)
        values = label_values(label, case.label, foreground)
        wanted = [int(v) for v in values if v != 0 and (foreground is None or v in foreground)]
        for value in wanted:
            hu = image[label == value]
            take = min(hu.size, SAMPLES_PER_CASE)
            samples.setdefault(value, []).append(
                rng.choice(hu, take, replace=False).astype(np.float64)
            )
    if not samples:
        return None
    by_label = []
    for value in sorted(samples):
        v = np.concatenate(samples[value])
        lo, hi = np.percentile(v, [0.5, 99.5])
        by_label.append(
            LabelIntensity(value, float(lo), float(hi), float(v.mean()), float(v.std()), v.size)
        )
    return Intensity.from_labels(by_label)


def measure_fingerprint(cases: Sequence[Case], foreground: tuple[int, ...] | None) -> Fingerprint:
    shapes, spacings = [], []
    for case in cases:
        g = read_info(case.image).geometry
        shape, spacing = g.canonical_grid()
        shapes.append(shape)
        spacings.append(tuple(float(s) for s in spacing))
    return Fingerprint(
        tuple(c.case_id for c in cases),
        tuple(shapes),
        tuple(spacings),
        intensity_stats(cases, foreground),
    )
