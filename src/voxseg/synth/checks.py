"""Checks of a requested grid: errors that say what to give instead."""

from __future__ import annotations

import math

from voxseg.errors import ConfigError


def check_grid(shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    if len(shape) != 3 or any(int(n) != n or n < 8 for n in shape):
        raise ConfigError(
            f"synthetic shape {tuple(shape)} must be three integers >= 8, e.g. 64 64 64"
        )
    return tuple(int(n) for n in shape), check_spacing(spacing)


def check_spacing(spacing) -> tuple[float, float, float]:
    if len(spacing) != 3 or not all(math.isfinite(d) and d > 0 for d in spacing):
        raise ConfigError(
            f"spacing {tuple(spacing)} must be three positive sizes in mm, e.g. 2.5 1.6 1.6"
        )
    return tuple(float(d) for d in spacing)
