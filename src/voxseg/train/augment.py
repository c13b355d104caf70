"""Data augmentation of the kind nnU-Net uses (MONAI array transforms): rotation and scaling,
noise, blur, brightness, contrast, simulated low resolution, gamma, mirroring.

Each sample is augmented from its own seed, drawn from that sample's generator, so batches
stay a pure function of (seed, epoch, step, sample): resume is exact and N processes see what
one process sees.
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np

ANISOTROPY = 3.0
"""Slices this many times thicker than the pixels: rotate in-plane only (nnU-Net's rule)."""


@cache
def _pipeline(in_plane_only: bool):
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandScaleIntensityFixedMeand,
        RandSimulateLowResolutiond,
    )

    both, img = ["image", "label"], ["image"]
    angle = math.pi / 6  # +-30 degrees
    rotate = (angle, 0.0, 0.0) if in_plane_only else (angle, angle, angle)
    return Compose(
        [
            RandAffined(
                both,
                prob=0.2,
                rotate_range=rotate,
                scale_range=(0.3, 0.3, 0.3),  # 0.7-1.3
                mode=("bilinear", "nearest"),
                padding_mode="reflection",
            ),
            RandGaussianNoised(img, prob=0.1, std=0.1),
            RandGaussianSmoothd(
                img, prob=0.2, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)
            ),
            RandScaleIntensityd(img, prob=0.15, factors=0.25),  # brightness x0.75-1.25
            RandScaleIntensityFixedMeand(img, prob=0.15, factors=0.25, preserve_range=True),
            RandSimulateLowResolutiond(img, prob=0.25, zoom_range=(0.5, 1.0)),
            RandAdjustContrastd(img, prob=0.3, gamma=(0.7, 1.5), retain_stats=True),
            RandFlipd(both, prob=0.5, spatial_axis=0),
            RandFlipd(both, prob=0.5, spatial_axis=1),
            RandFlipd(both, prob=0.5, spatial_axis=2),
        ]
    )


def augment(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator, spacing: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (image (D, H, W), label (R, D, H, W)) pair; `spacing` (mm) decides
    in-plane-only rotation."""
    in_plane_only = max(spacing) / min(spacing) >= ANISOTROPY
    pipeline = _pipeline(in_plane_only)
    pipeline.set_random_state(seed=int(rng.integers(2**31)))
    out = pipeline({"image": image[None], "label": label})
    return (
        np.asarray(out["image"], dtype=np.float32)[0],
        (np.asarray(out["label"]) > 0.5).astype(np.float32),
    )
