"""Smooth random fields: spatially correlated texture, not white noise."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def smooth_field(rng: np.random.Generator, shape, spacing, sigma_mm: float) -> np.ndarray:
    """A zero-mean, unit-SD random field over `shape` that varies over about `sigma_mm`.

    White noise smoothed by a Gaussian of `sigma_mm`. It is drawn on a grid of ~sigma/2 cells and
    interpolated up, so a coarse field over a big tumour costs no more than a fine one. The SD is
    normalised by the kernel, not the sample, so a small box gets the same amplitude as a big one.
    """
    step = [max(1, int(sigma_mm / (2 * d))) for d in spacing]
    cells = [(n - 1) // s + 2 for n, s in zip(shape, step, strict=True)]
    sigma = [sigma_mm / (d * s) for d, s in zip(spacing, step, strict=True)]
    field = ndimage.gaussian_filter(rng.standard_normal(cells, dtype=np.float32), sigma)
    field /= math.sqrt(math.prod(_kernel_energy(s) for s in sigma))
    if all(s == 1 for s in step):
        return field[: shape[0], : shape[1], : shape[2]]
    return ndimage.affine_transform(field, [1 / s for s in step], output_shape=shape, order=1)


def _kernel_energy(sigma: float) -> float:
    """Sum of squares of `ndimage.gaussian_filter`'s 1D kernel: the variance it leaves."""
    radius = int(4 * sigma + 0.5)
    impulse = np.zeros(2 * radius + 1)
    impulse[radius] = 1.0
    kernel = ndimage.gaussian_filter1d(impulse, sigma, mode="constant")
    return float(np.sum(kernel**2))
