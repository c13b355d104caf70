"""Analytic shapes on open (broadcastable) grids of mm coordinates."""

from __future__ import annotations

import numpy as np


def ellipse(coords, centre, radii) -> np.ndarray:
    """Normalised squared radius of an axis-aligned ellipse/ellipsoid (< 1 inside), broadcast."""
    return sum(((c - c0) / r) ** 2 for c, c0, r in zip(coords, centre, radii, strict=True))


def superellipse(coords, centre, radii, power: float = 2.4) -> np.ndarray:
    """Like `ellipse` but boxier: the abdomen's cross-section is flatter than an ellipse."""
    return sum(
        np.abs((c - c0) / r) ** power for c, c0, r in zip(coords, centre, radii, strict=True)
    )


def grid_mm(shape, spacing, centred: bool) -> tuple[np.ndarray, ...]:
    """Open-grid coordinates in mm per array axis, broadcastable to `shape`."""
    axes = []
    for n, (size, step) in enumerate(zip(shape, spacing, strict=True)):
        c = np.arange(size, dtype=np.float32)
        if centred:
            c -= (size - 1) / 2
        axes.append((c * step).reshape([-1 if k == n else 1 for k in range(len(shape))]))
    return tuple(axes)


def near(coords, centre, radius) -> tuple[slice, ...]:
    """Index box of the open-grid points within `radius` of `centre` along every axis."""
    box = []
    for c, c0 in zip(coords, centre, strict=True):
        line = c.reshape(-1)
        box.append(
            slice(
                int(np.searchsorted(line, c0 - radius)),
                int(np.searchsorted(line, c0 + radius, side="right")),
            )
        )
    return tuple(box)


def frame(coords, centre, axes: np.ndarray) -> list[np.ndarray]:
    """`coords` relative to `centre`, along the rows of `axes` (an orthonormal frame)."""
    d = [c - c0 for c, c0 in zip(coords, centre, strict=True)]
    return [sum(float(a) * dc for a, dc in zip(row, d, strict=True)) for row in axes]
