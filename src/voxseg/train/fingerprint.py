"""Measure the dataset once: spacings, shapes and foreground intensities, as nnU-Net's
fingerprint does. The planner reads only this record, never the files, so a plan can be
tested exactly and reproduced on another machine from `fingerprint.json`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from voxseg.data.checks import binary_target, check_pair, label_values
from voxseg.data.discovery import Case
from voxseg.data.io import read_image, read_info
from voxseg.geometry import Reorientation

INTENSITY_CASES = 8
"""Cases sampled for the foreground intensity statistics."""
SAMPLES_PER_CASE = 20_000


@dataclass(frozen=True)
class Intensity:
    """Foreground HU over a sample of cases."""

    p005: float
    p995: float
    mean: float
    std: float


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
        intensity = Intensity(**d["intensity"]) if d.get("intensity") else None
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
    samples = []
    for case in list(cases)[:INTENSITY_CASES]:
        image, geometry = read_image(case.image)
        label, label_geometry = read_image(case.label)
        check_pair(geometry, label_geometry, case.image, case.label)
        label_values(label, case.label, foreground)
        values = image[binary_target(label, foreground) > 0]
        if values.size:
            take = min(values.size, SAMPLES_PER_CASE)
            samples.append(rng.choice(values, take, replace=False).astype(np.float64))
    if not samples:
        return None
    v = np.concatenate(samples)
    lo, hi = np.percentile(v, [0.5, 99.5])
    return Intensity(float(lo), float(hi), float(v.mean()), float(v.std()))


def measure_fingerprint(cases: Sequence[Case], foreground: tuple[int, ...] | None) -> Fingerprint:
    shapes, spacings = [], []
    for case in cases:
        g = read_info(case.image).geometry
        axes = Reorientation.to_canonical(g).axes
        shapes.append(tuple(g.shape[a] for a in axes))
        spacings.append(tuple(float(g.spacing[a]) for a in axes))
    return Fingerprint(
        tuple(c.case_id for c in cases),
        tuple(shapes),
        tuple(spacings),
        intensity_stats(cases, foreground),
    )
