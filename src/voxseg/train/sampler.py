"""Training batches: whole volumes (seed recipe) or patches with foreground oversampling.

Sampling is a pure function of (seed, epoch, step), so a resumed run draws exactly the
batches an uninterrupted one would, without saving any sampler state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from voxseg.errors import ConfigError
from voxseg.geometry import Shape3
from voxseg.regions import channels
from voxseg.train.augment import augment
from voxseg.train.prepared import PreparedCase


@dataclass(frozen=True)
class Batch:
    image: np.ndarray
    """(N, 1, D, H, W) float32."""
    label: np.ndarray
    """(N, R, D, H, W) float32 in {0, 1}, one channel per region."""


@dataclass(frozen=True)
class SamplerConfig:
    batch_size: int
    """Global batch: split over `world_size` processes."""
    patch_size: Shape3 | None
    foreground_oversample: float
    augment: str
    """'off', 'light' or 'full' (see TrainConfig.augment)."""
    seed: int
    steps_per_epoch: int | None = None
    regions: int = 1
    """Number of target regions (model outputs)."""
    rank: int = 0
    world_size: int = 1


def steps_in_epoch(n_cases: int, cfg: SamplerConfig) -> int:
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch
    return max(1, -(-n_cases // cfg.batch_size))


def crop_patch(
    case: PreparedCase, centre: np.ndarray, size: Shape3, pad_value: float
) -> tuple[np.ndarray, np.ndarray]:
    """Patch of `size` centred on `centre`, padded where it leaves the volume; the label
    patch is the case's uint8 region bit mask."""
    shape = np.asarray(case.image.shape)
    size_a = np.asarray(size)
    start = centre - size_a // 2
    lo = np.maximum(start, 0)
    hi = np.minimum(start + size_a, shape)
    image = np.full(size, pad_value, dtype=np.float32)
    label = np.zeros(size, dtype=np.uint8)
    dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
    src = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    image[dst] = case.image[src]
    label[dst] = case.label[src]
    return image, label


def _centre(
    case: PreparedCase, rng: np.random.Generator, size: Shape3, foreground: bool
) -> np.ndarray:
    present = [p for p in case.foreground if len(p)]
    if foreground and present:
        # As nnU-Net: first a region the case has, then one of its voxels, so a tumour a few
        # % the size of the kidney is centred as often as the kidney.
        positions = present[rng.integers(len(present))] if len(present) > 1 else present[0]
        return positions[rng.integers(len(positions))].astype(np.int64)
    shape = np.asarray(case.image.shape)
    half = np.asarray(size) // 2
    lo = np.minimum(half, shape // 2)
    hi = np.maximum(shape - half, lo + 1)
    return rng.integers(lo, hi)


def _light(
    image: np.ndarray, label: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Left-right flip (kidneys come in pairs) and a mild intensity jitter."""
    if rng.random() < 0.5:
        image, label = image[..., ::-1], label[..., ::-1]
    scale = np.float32(rng.uniform(0.9, 1.1))
    shift = np.float32(rng.uniform(-0.1, 0.1))
    return image * scale + shift, label


def rank_slice(batch_size: int, rank: int, world_size: int) -> range:
    """Indices of the global batch that this rank computes (the global batch is split evenly)."""
    if batch_size % world_size:
        raise ConfigError(
            f"batch size {batch_size} does not split over {world_size} processes; "
            f"use a multiple of {world_size}"
        )
    per_rank = batch_size // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)


def epoch_batches(
    cases: Sequence[PreparedCase],
    epoch: int,
    cfg: SamplerConfig,
    pad_value: float,
    start: int = 0,
    steps: int | None = None,
) -> Iterator[Batch]:
    """This rank's share of each global batch of one epoch.

    Sample i of step s is drawn from its own generator seeded by (seed, epoch, s, i), so the
    global batch is the same whatever the number of processes: 2 ranks together see exactly
    what 1 process sees, and a run may resume with a different number of processes.
    `steps` overrides the epoch's length (a time budget adapts it).
    """
    n_steps = steps or steps_in_epoch(len(cases), cfg)
    mine = rank_slice(cfg.batch_size, cfg.rank, cfg.world_size)
    if cfg.patch_size is None:
        order_rng = np.random.default_rng([cfg.seed, epoch, 0])
        rounds = -(-n_steps * cfg.batch_size // len(cases))
        order = np.concatenate([order_rng.permutation(len(cases)) for _ in range(rounds)])
    for step in range(start, n_steps):  # every step has its own seeds: skipping costs nothing
        images, labels = [], []
        for i in mine:
            rng = np.random.default_rng([cfg.seed, epoch, step + 1, i])
            if cfg.patch_size is None:
                case = cases[order[step * cfg.batch_size + i]]
                image = np.asarray(case.image, dtype=np.float32)
                label = np.asarray(case.label)
            else:
                case = cases[rng.integers(len(cases))]
                fg = rng.random() < cfg.foreground_oversample
                image, label = crop_patch(
                    case, _centre(case, rng, cfg.patch_size, fg), cfg.patch_size, pad_value
                )
            label = channels(label, cfg.regions)
            if cfg.augment == "light":
                image, label = _light(image, label, rng)
            elif cfg.augment == "full":
                image, label = augment(image, label, rng, case.record.spacing)
            images.append(image)
            labels.append(label)
        yield Batch(np.stack(images)[:, None].copy(), np.stack(labels).copy())
