"""Network-grid prediction around any network callable, in numpy: whole volume (padded to the
network's size divisor) or a Gaussian-weighted sliding window, with mirror test-time
augmentation. Both engines (torch, ONNX Runtime) run through here, so they cannot drift apart.

The sliding window replays `monai.inferers.sliding_window_inference` (mode="gaussian",
sigma_scale 0.125, constant padding): the same window positions, importance map, padding of
a volume smaller than the window and normalisation; tests pin it to MONAI's numbers. It is
numpy rather than MONAI itself because ONNX Runtime prediction must run without torch, and
because importing MONAI costs ~2 s per `voxseg predict` (a third of a full CT's time; see
benchmarks/RESULTS.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from voxseg.geometry import Shape3

Network = Callable[[np.ndarray], np.ndarray]
"""A (D, H, W) float32 block -> (C, D, H, W) float32 probabilities; D, H, W are multiples of
the network's size divisor."""
SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3
"""MONAI clamps the importance map to at least this (or its minimum, if larger)."""


def importance_map(window: Shape3) -> np.ndarray:
    """MONAI's Gaussian importance map (sigma = 0.125 x window), float32, with its floor."""
    weights = np.ones((), dtype=np.float32)
    for n in window:
        x = np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2)
        g = np.exp(x**2 / np.float32(-2 * (SIGMA_SCALE * n) ** 2))
        weights = weights[..., None] * g
    return np.maximum(weights, np.float32(max(float(weights.min()), MIN_WEIGHT)))


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """MONAI's window starts along one axis of `size` >= `window` voxels (dense_patch_slices):
    a step of window x (1 - overlap), the last window moved back to end at the border."""
    step = window if window == size else max(int(window * (1 - overlap)), 1)
    count = next((i + 1 for i in range(math.ceil(size / step)) if i * step + window >= size), 1)
    return [min(i * step, size - window) for i in range(count)]


def _whole(network: Network, volume: np.ndarray, divisor: Shape3, pad_value: float) -> np.ndarray:
    shape = volume.shape
    after = [-(-s // k) * k - s for s, k in zip(shape, divisor, strict=True)]
    padded = np.pad(volume, [(0, a) for a in after], constant_values=pad_value)
    return network(padded)[:, : shape[0], : shape[1], : shape[2]]


def _sliding(
    network: Network, volume: np.ndarray, window: Shape3, overlap: float, pad_value: float
) -> np.ndarray:
    # A volume smaller than the window is padded around (half before, the rest after).
    before = [max(w - s, 0) // 2 for s, w in zip(volume.shape, window, strict=True)]
    pad = [(b, max(w - s, 0) - b) for b, s, w in zip(before, volume.shape, window, strict=True)]
    padded = np.pad(volume, pad, constant_values=pad_value)
    weights = importance_map(window)
    starts = [window_starts(s, w, overlap) for s, w in zip(padded.shape, window, strict=True)]
    total = count = None
    for corner in itertools.product(*starts):
        box = tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True))
        prob = network(np.ascontiguousarray(padded[box]))
        if total is None:
            total = np.zeros((prob.shape[0], *padded.shape), dtype=np.float32)
            count = np.zeros(padded.shape, dtype=np.float32)
        total[(slice(None), *box)] += prob * weights
        count[box] += weights
    total /= count
    inside = tuple(slice(b, b + s) for b, s in zip(before, volume.shape, strict=True))
    return total[(slice(None), *inside)]


def _flips(tta: bool) -> list[tuple[int, ...]]:
    return [(), (0,), (1,), (2,)] if tta else [()]


def predict_volume(
    network: Network,
    volume: np.ndarray,
    *,
    divisor: Shape3,
    window: Shape3 | None,
    overlap: float = 0.25,
    tta: bool = False,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Probabilities (C, D, H, W) float32 on the grid of `volume` (D, H, W).

    `window` is the sliding-window size (a multiple of `divisor`); None runs the whole volume
    at once, padded at the end to the divisor. With `tta`, the mean over the volume as is and
    mirrored along each axis.
    """
    volume = np.asarray(volume, dtype=np.float32)
    total = None
    for axes in _flips(tta):
        flipped = np.flip(volume, axes) if axes else volume
        if window is None:
            prob = _whole(network, flipped, divisor, pad_value)
        else:
            prob = _sliding(network, flipped, tuple(window), overlap, pad_value)
        prob = np.flip(prob, tuple(a + 1 for a in axes)) if axes else prob
        total = prob if total is None else total + prob
    return np.ascontiguousarray(total / np.float32(len(_flips(tta))), dtype=np.float32)
