"""Plan the default recipe from the dataset and the time budget, as nnU-Net's planner does.

- Intensity: clip to the 0.5-99.5 percentiles of foreground HU, standardise with their mean/std.
- Spacing: the median spacing, coarsened until the median case fits the voxel budget that
  the measured training throughput affords in the time budget (so a 10-minute CPU run sees
  the data many times at a coarser grid instead of once at full resolution).
- Patch: the median case at that spacing, shrunk evenly so one step takes about a second.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from voxseg.config import ModelConfig, RunConfig, TrainConfig
from voxseg.data.discovery import Case
from voxseg.data.io import read_image, read_info
from voxseg.geometry import Reorientation
from voxseg.preprocess import binary_target

PASSES = 30.0
"""How many times the planned budget should let the network see the median case."""
STEP_SECONDS = 1.0
"""Target duration of one training step; caps the patch size on slow machines."""
MAX_PATCH = (128, 160, 160)
MIN_PATCH = 32
MAX_COARSENING = 2.0
"""Never plan a grid coarser than this times the median spacing: kidneys would lose their shape."""
DEFAULT_MINUTES = 60.0
"""Budget the plan assumes when no --max-minutes is given."""
VAL_SHARE_INV = 6.0
"""Training time per epoch is about this many times the validation time."""


@dataclass(frozen=True)
class Plan:
    config: RunConfig
    median_spacing: tuple[float, float, float]
    median_shape: tuple[int, int, int]
    voxels_per_second: float
    notes: tuple[str, ...]


def intensity_stats(cases: Sequence[Case], foreground, max_cases: int = 8, seed: int = 0):
    """(p0.5, p99.5, mean, std) of foreground HU over a sample of cases."""
    rng = np.random.default_rng(seed)
    samples = []
    for case in list(cases)[:max_cases]:
        image, _ = read_image(case.image)
        label, _ = read_image(case.label)
        values = image[binary_target(label, foreground) > 0]
        if values.size:
            samples.append(
                rng.choice(values, min(values.size, 20_000), replace=False).astype(np.float64)
            )
    if not samples:
        return None
    v = np.concatenate(samples)
    lo, hi = np.percentile(v, [0.5, 99.5])
    return float(lo), float(hi), float(v.mean()), float(v.std())


def measure_throughput(
    model_cfg: ModelConfig, device: torch.device, precision: str, side: int = 48
) -> float:
    """Training voxels per second of one step on this machine (two timed steps after a warm-up)."""
    from voxseg.inference import autocast, autocast_dtype
    from voxseg.models import build_model

    torch.manual_seed(0)
    model = build_model(model_cfg.name, **model_cfg.options).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = autocast_dtype(precision, device)
    x = torch.randn(2, 1, side, side, side, device=device)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        with autocast(device, amp):
            out = model(x)
        out = out[0] if isinstance(out, list) else out
        out.float().mean().backward()
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 2 * side**3 / min(times[2:])  # the first steps build kernels; min resists noise


def patch_for(median_shape, voxels: float, divisor: int) -> tuple[int, int, int]:
    """The median case shrunk evenly (same aspect, in voxels) to about `voxels`, in multiples
    of `divisor`, never below MIN_PATCH nor above MAX_PATCH or the median case itself."""
    median = np.asarray(median_shape, dtype=float)
    scale = min(1.0, (voxels / float(np.prod(median))) ** (1 / 3))
    patch = []
    for m, cap in zip(median * scale, MAX_PATCH, strict=True):
        side = int(round(m / divisor)) * divisor
        patch.append(int(min(max(side, MIN_PATCH), cap)))
    return tuple(patch)


def plan_default(
    cases: Sequence[Case],
    *,
    foreground,
    max_minutes: float | None,
    device: torch.device,
    base: RunConfig | None = None,
) -> Plan:
    base = base or RunConfig()
    notes = []
    infos = [read_info(c.image).geometry for c in cases]
    spacings = np.array([[g.spacing[a] for a in Reorientation.to_canonical(g).axes] for g in infos])
    shapes = np.array([[g.shape[a] for a in Reorientation.to_canonical(g).axes] for g in infos])
    median_spacing = tuple(float(v) for v in np.median(spacings, axis=0))
    median_extent_mm = np.median(shapes * spacings, axis=0) * 0.85  # body crop trims air
    stats = intensity_stats(cases, foreground)
    pre = base.preprocess
    if stats:
        lo, hi, mean, std = stats
        pre = replace(
            pre,
            window=(round(lo, 1), round(hi, 1)),
            mean=round(mean, 2),
            std=round(max(std, 1.0), 2),
        )
    else:
        notes.append("no foreground found in the sampled cases: default kidney HU window kept")

    model = base.model
    if model.name == "unet" and not model.options:
        # Width by device: 8 base channels train ~2x faster on a CPU (and learn kidneys within
        # minutes); a GPU affords nnU-Net-like width.
        model = replace(model, options={"base_channels": 8 if device.type == "cpu" else 32})
    vps = measure_throughput(model, device, base.train.precision)
    budget_s = (max_minutes or DEFAULT_MINUTES) * 60.0
    voxel_budget = vps * budget_s * 0.6 / PASSES  # 60 %: validation and data take the rest
    spacing = np.array(median_spacing)
    for _ in range(40):  # coarsen the finest axes first, 10 % at a time
        if np.prod(median_extent_mm / spacing) <= voxel_budget:
            break
        if spacing.min() >= MAX_COARSENING * min(median_spacing):
            notes.append("time budget is tight for this data: spacing coarsened to the limit")
            break
        finest = spacing <= spacing.min() * 1.5
        spacing = np.where(finest, spacing * 1.1, spacing)
    spacing = tuple(round(float(s), 3) for s in spacing)
    median_shape = tuple(int(round(e / s)) for e, s in zip(median_extent_mm, spacing, strict=True))

    divisor = 2 ** int(model.options.get("depth", 4)) if model.name == "unet" else 8
    batch = 2
    patch_voxels = vps * STEP_SECONDS / batch
    patch = patch_for(median_shape, patch_voxels, divisor)

    # Schedule: epochs of fixed length, validation a small share of the time, and as many
    # epochs as the budget affords so the cosine decay ends when the time does.
    step_s = batch * float(np.prod(patch)) / vps
    n_val = max(1, round(len(cases) * base.train.val_fraction))
    val_s = n_val * float(np.prod(median_shape)) * 1.6 / (3.0 * vps)  # overlap, fwd ~3x a step
    steps_per_epoch = int(min(250, max(25, VAL_SHARE_INV * val_s / step_s)))
    epochs = base.train.epochs
    if max_minutes:
        epochs = max(1, int(0.9 * budget_s / (steps_per_epoch * step_s + val_s)))
    notes.append(
        f"throughput {vps / 1e6:.2f} Mvoxel/s -> spacing {spacing} mm, median case {median_shape}, "
        f"patch {patch}, batch {batch}, {epochs} epochs x {steps_per_epoch} steps "
        f"(~{step_s:.2f} s/step, ~{val_s:.0f} s/validation)"
    )
    config = replace(
        base,
        model=model,
        preprocess=replace(pre, mode="spacing", spacing=spacing, shape=None),
        train=replace(
            base.train,
            patch_size=patch,
            batch_size=batch,
            max_minutes=max_minutes,
            steps_per_epoch=steps_per_epoch,
            epochs=epochs,
            patience=max(base.train.patience, epochs // 3) if max_minutes else base.train.patience,
        ),
    )
    return Plan(config, median_spacing, median_shape, vps, tuple(notes))


def seed_preset(base: RunConfig | None = None) -> RunConfig:
    """The original Keras recipe: 128^3 resize, seed CNN, Adam 1e-3, BCE, batch 4, 20 epochs,
    early stopping with patience 3 restoring the best weights."""
    base = base or RunConfig()
    return replace(
        base,
        preprocess=replace(
            base.preprocess, mode="shape", shape=(128, 128, 128), spacing=None, crop_body=False
        ),
        model=ModelConfig(name="seed"),
        train=TrainConfig(
            epochs=20,
            batch_size=4,
            lr=1e-3,
            optimizer="adam",
            schedule="constant",
            loss="bce",
            patch_size=None,
            augment=False,
            patience=3,
            foreground_oversample=0.0,
            val_fraction=base.train.val_fraction,
            val_cases=base.train.val_cases,
            seed=base.train.seed,
            max_minutes=base.train.max_minutes,
            precision=base.train.precision,
        ),
    )
