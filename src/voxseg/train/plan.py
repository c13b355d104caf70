"""Plan the default recipe from the dataset's fingerprint, as nnU-Net's planner does.

A pure function of (fingerprint, throughput, budget, device class): no file is read and
nothing is timed here, so a plan can be tested exactly and reproduced on another machine.

- Intensity: clip to a window covering every foreground label's 0.5-99.5 HU percentiles,
  standardise with their equal-weight mean/std (a small tumour is not outvoted by the kidney).
- Spacing: the median spacing, coarsened (finest axes first, at most MAX_COARSENING times)
  until the median case fits the device class's voxel budget and, with a time budget, until
  the training set can be seen MIN_PASSES times at the device class's nominal throughput (a
  10-minute CPU run gets twice the epochs and a small validation; a long or GPU run keeps
  the data's own grid).
- Patch: the median case at that spacing, shrunk evenly to the device class's patch size.
- Schedule: with a time budget the clock ends training and the learning rate follows the
  elapsed time, so the throughput only sizes the first epoch; without one, the number of
  epochs is sized for DEFAULT_MINUTES.
Spacing and patch depend on the data, the device class and the budget only (all known
exactly): a noisy throughput reading on a busy machine cannot make the grid coarser.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from voxseg.config import SEED_SHAPE, ModelConfig, RunConfig, TrainConfig
from voxseg.models import size_divisor
from voxseg.models.shape import Divisor, per_axis
from voxseg.train.fingerprint import Fingerprint

DeviceClass = Literal["cpu", "gpu"]


@dataclass(frozen=True)
class DeviceBudget:
    """What one device class affords, in voxels."""

    case_voxels: float
    """The median case at the planned spacing should not exceed this."""
    patch_voxels: float
    """Voxels of one training patch."""
    base_channels: int
    """U-Net width: 8 trains ~2x faster than 16 on a CPU and learns kidneys within minutes."""
    voxels_per_second: float
    """Nominal training throughput of the class (patch voxels per second), used only to fit
    the grid to a time budget: a constant, so the plan does not follow a noisy reading. CPU:
    the order of what a quiet 2-core AVX512-BF16 CPU trains the planned U-Net at
    (benchmarks/RESULTS.md). GPU: assumed, not yet measured; it keeps the data's own grid for
    any budget a user would give."""


DEVICE_BUDGETS = {
    "cpu": DeviceBudget(
        case_voxels=12e6, patch_voxels=0.6e6, base_channels=8, voxels_per_second=1.0e6
    ),
    "gpu": DeviceBudget(
        case_voxels=80e6, patch_voxels=2.5e6, base_channels=32, voxels_per_second=30e6
    ),
}
MIN_PASSES = 20.0
"""With a time budget, the training set should fit this many times into the voxels the
budget trains at the nominal throughput; otherwise the grid is coarsened (within
MAX_COARSENING). Measured at 10 minutes only so far (benchmarks/RESULTS.md)."""
TRAIN_SHARE = 0.85
"""Share of a timed run spent on optimizer steps (the rest: validation, start-up)."""
BATCH = 2
MAX_PATCH = (128, 160, 160)
MIN_PATCH = 32
MAX_COARSENING = 2.0
"""Never plan a grid coarser than this times the median spacing: kidneys would lose their shape."""
BODY_SHARE = 0.85
"""Share of each axis left after cropping to the body (air around the patient is cut)."""
UNET_DEPTH = 4
DEFAULT_MINUTES = 60.0
"""Budget the epoch count is sized for when no --max-minutes is given."""
VAL_SHARE_INV = 11.0
"""Training time per epoch is about this many times the validation time."""
TIMED_EPOCHS = 10_000
"""Epoch cap with a time budget: the clock ends training, not the count."""
PLANNED_LR = 3e-3
"""Peak AdamW learning rate of the planned U-Net (cosine over the budget). A 10-minute CPU run
makes a few hundred steps: 3e-3 beat 1e-3 on every imaging domain of the quality benchmark
(benchmarks/RESULTS.md, issue 22); `--lr` overrides it."""
VAL_SMOOTHING = 0.8
"""Moving-average weight for picking the best model on validation Dice (nnU-Net: 0.9 over
1000 epochs; our runs have tens of epochs)."""


@dataclass(frozen=True)
class Plan:
    config: RunConfig
    median_spacing: tuple[float, float, float]
    median_shape: tuple[int, int, int]
    """Of the body-cropped median case at the planned spacing."""
    voxels_per_second: float
    """The training throughput the plan assumed."""
    notes: tuple[str, ...]


def patch_for(median_shape, voxels: float, divisor: Divisor) -> tuple[int, int, int]:
    """The median case shrunk evenly (same aspect, in voxels) to about `voxels`, in multiples
    of `divisor` (per axis), never below MIN_PATCH (or twice the divisor) nor above MAX_PATCH
    or the median case itself."""
    median = np.asarray(median_shape, dtype=float)
    scale = min(1.0, (voxels / float(np.prod(median))) ** (1 / 3))
    patch = []
    for m, cap, d in zip(median * scale, MAX_PATCH, per_axis(divisor), strict=True):
        side = int(round(m / d)) * d
        patch.append(int(min(max(side, min(MIN_PATCH, 4 * d), 2 * d), cap)))
    return tuple(patch)


def plan_spacing(
    median_spacing: np.ndarray, extent_mm: np.ndarray, case_voxels: float
) -> tuple[np.ndarray, bool]:
    """Coarsen the finest axes 10 % at a time until the median case fits `case_voxels`, each
    axis at most MAX_COARSENING times its median; the flag says that limit was reached."""
    limit = MAX_COARSENING * median_spacing
    spacing = median_spacing.copy()
    while np.prod(extent_mm / spacing) > case_voxels:
        finest = spacing <= spacing.min() * 1.5
        grown = np.minimum(np.where(finest, spacing * 1.1, spacing), limit)
        if np.array_equal(grown, spacing):
            return spacing, True
        spacing = grown
    return spacing, False


def budget_case_voxels(max_minutes: float, n_train: int, budget: DeviceBudget) -> float:
    """Voxels per case at which `n_train` cases fit MIN_PASSES times into what `max_minutes`
    trains at the device class's nominal throughput."""
    trained = max_minutes * 60 * TRAIN_SHARE * budget.voxels_per_second
    return trained / (n_train * MIN_PASSES)


def unet_topology(spacing, depth: int = UNET_DEPTH) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net's rule for thick slices: an axis more than twice as coarse as the finest one
    gets kernel 1 and stride 1 at that level (no mixing across slices yet), until pooling the
    fine axes has caught up with it. Returns (strides per level, kernels per level + 1)."""
    current = [float(s) for s in spacing]
    strides, kernels = [], []
    for level in range(depth + 1):
        fine = min(current)
        kernels.append([3 if c < 2 * fine else 1 for c in current])
        if level < depth:
            stride = [2 if c < 2 * fine else 1 for c in current]
            strides.append(stride)
            current = [c * s for c, s in zip(current, stride, strict=True)]
    return strides, kernels


def planned_model(
    model: ModelConfig,
    device_class: DeviceClass,
    spacing=(1.0, 1.0, 1.0),
    anisotropic: bool = True,
    width: int | None = None,
) -> ModelConfig:
    """The U-Net's width by device class and its topology by spacing (unless `anisotropic` is
    off), unless the user chose its options; `width` replaces the device's base width. The
    thick-slice topology costs ~10 % per step and won at equal time on thick-slice CT
    (benchmarks/RESULTS.md)."""
    if model.name != "unet" or model.options:
        return model
    options = {"base_channels": width or DEVICE_BUDGETS[device_class].base_channels}
    strides, kernels = unet_topology(spacing)
    if anisotropic and any(s != [2, 2, 2] for s in strides):  # spell the topology out
        options |= {"strides": strides, "kernels": kernels}
    return replace(model, options=options)


def plan_default(
    fingerprint: Fingerprint,
    *,
    voxels_per_second: float,
    max_minutes: float | None,
    device_class: DeviceClass,
    base: RunConfig | None = None,
    anisotropic: bool = True,
    width: int | None = None,
    budget_grid: bool = True,
) -> Plan:
    """`budget_grid` lets a time budget coarsen the grid (see `budget_case_voxels`)."""
    base = base or RunConfig()
    budget = DEVICE_BUDGETS[device_class]
    notes = []
    spacings = np.asarray(fingerprint.spacings, dtype=float)
    shapes = np.asarray(fingerprint.shapes, dtype=float)
    median_spacing = np.median(spacings, axis=0)
    extent_mm = np.median(shapes * spacings, axis=0) * BODY_SHARE

    pre = base.preprocess
    stats = fingerprint.intensity
    if stats:
        pre = replace(
            pre,
            hu_window=(round(stats.p005, 1), round(stats.p995, 1)),
            mean=round(stats.mean, 2),
            std=round(max(stats.std, 1.0), 2),
        )
    else:
        notes.append("no foreground found in the sampled cases: default kidney HU window kept")

    case_voxels = budget.case_voxels
    n_train = max(1, round(len(fingerprint.shapes) * (1 - base.train.val_fraction)))
    if max_minutes and budget_grid:
        affordable = budget_case_voxels(max_minutes, n_train, budget)
        if affordable < case_voxels:
            case_voxels = affordable
            notes.append(
                f"{max_minutes:g}-minute budget: grid sized so the {n_train} training cases "
                f"fit {MIN_PASSES:g} times ({affordable / 1e6:.2f} Mvoxel per case at "
                f"{budget.voxels_per_second / 1e6:g} Mvoxel/s nominal)"
            )
    spacing, limited = plan_spacing(median_spacing, extent_mm, case_voxels)
    if limited:
        notes.append("the data is large for this device or budget: spacing coarsened to the limit")
    spacing = tuple(round(float(s), 3) for s in spacing)
    model = planned_model(base.model, device_class, spacing, anisotropic, width)
    median_shape = tuple(int(round(e / s)) for e, s in zip(extent_mm, spacing, strict=True))
    divisor = size_divisor(model.name, **model.options)
    patch = patch_for(median_shape, budget.patch_voxels, divisor)

    # The first epoch: long enough that validation is ~1/VAL_SHARE_INV of the time; with a
    # time budget later epochs adapt to what the clock shows.
    step_s = BATCH * float(np.prod(patch)) / voxels_per_second
    n_val = max(1, round(len(fingerprint.shapes) * base.train.val_fraction))
    val_s = n_val * float(np.prod(median_shape)) * 1.6 / (3.0 * voxels_per_second)
    steps_per_epoch = int(min(250, max(25, VAL_SHARE_INV * val_s / step_s)))
    if max_minutes:
        epochs, patience = TIMED_EPOCHS, 0
    else:
        minutes = DEFAULT_MINUTES * 60.0
        epochs = max(1, int(0.9 * minutes / (steps_per_epoch * step_s + val_s)))
        patience = base.train.patience
    notes.append(
        f"spacing {spacing} mm (median {tuple(round(float(s), 3) for s in median_spacing)}), "
        f"median case {median_shape}, patch {patch}, batch {BATCH} ({device_class} budget); "
        f"assumed throughput {voxels_per_second / 1e6:.2f} Mvoxel/s -> first epoch "
        f"{steps_per_epoch} steps (~{step_s:.2f} s/step, ~{val_s:.0f} s/validation)"
        + ("" if max_minutes else f", {epochs} epochs")
    )
    config = replace(
        base,
        model=model,
        preprocess=replace(pre, mode="spacing", spacing=spacing, shape=None),
        train=replace(
            base.train,
            patch_size=patch,
            batch_size=BATCH,
            max_minutes=max_minutes,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            patience=patience,
            lr=PLANNED_LR,
            val_smoothing=VAL_SMOOTHING,
        ),
        infer=replace(base.infer, window=patch),
    )
    return Plan(
        config,
        tuple(float(s) for s in median_spacing),
        median_shape,
        voxels_per_second,
        tuple(notes),
    )


def seed_preset(base: RunConfig | None = None) -> RunConfig:
    """The original Keras recipe: 128^3 resize, seed CNN, Adam 1e-3, BCE, batch 4, 20 epochs,
    early stopping with patience 3 restoring the best weights."""
    base = base or RunConfig()
    return replace(
        base,
        preprocess=replace(
            base.preprocess, mode="shape", shape=SEED_SHAPE, spacing=None, crop_body=False
        ),
        model=ModelConfig(name="seed"),
        train=TrainConfig(
            epochs=20,
            batch_size=4,
            lr=1e-3,
            weight_decay=0.0,
            optimizer="adam",
            schedule="constant",
            loss="bce",
            patch_size=None,
            augment="off",
            patience=3,
            foreground_oversample=0.0,
            val_fraction=base.train.val_fraction,
            val_cases=base.train.val_cases,
            seed=base.train.seed,
            max_minutes=base.train.max_minutes,
            precision=base.train.precision,
        ),
        infer=replace(base.infer, window=None),
    )
