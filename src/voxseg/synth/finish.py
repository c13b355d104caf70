"""What the scanner adds last: blur, quantum noise, rounding to int16 HU."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from voxseg.synth.tissue import BLUR_MM, HU_RANGE


def finish(hu: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    """Blur, add noise, round to int16 HU."""
    sigma = [BLUR_MM / d for d in spacing]
    blurred = ndimage.gaussian_filter(hu, sigma, truncate=3.0, mode="nearest")
    image = np.clip(np.rint(blurred), *HU_RANGE).astype(np.int16)
    add_noise(image, rng.uniform(10, 20), rng)
    return image


def add_noise(image: np.ndarray, sd: float, rng: np.random.Generator) -> None:
    """Add Gaussian noise in place, then clip to the scanner's range.

    Big volumes reuse a pool of 4M samples at random offsets: drawing 160M normals would
    dominate the run time and nobody can see the repetition.
    """
    flat = image.reshape(-1)  # a view: `image` is contiguous
    size = min(flat.size, 1 << 22)
    pool = np.rint(rng.standard_normal(size, dtype=np.float32) * sd).astype(np.int16)
    pool = np.concatenate([pool, pool])
    for start in range(0, flat.size, size):
        stop = min(start + size, flat.size)
        offset = int(rng.integers(size))
        flat[start:stop] += pool[offset : offset + stop - start]
    np.clip(image, *HU_RANGE, out=image)
