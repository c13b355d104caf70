"""The training loop, as functions: one epoch, validation, early stopping, checkpoints.

Only rank 0 writes files. Everything needed to continue exactly (weights, optimizer, epoch,
early-stopping state, history) is saved at every epoch boundary; batches are a pure function
of (seed, epoch, step), so a resumed run continues on the batches it would have seen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from voxseg.config import RunConfig
from voxseg.data.cache import PreparedCase
from voxseg.data.dataset import SamplerConfig, epoch_batches, steps_in_epoch
from voxseg.errors import ConfigError
from voxseg.inference import autocast, autocast_dtype, predict_probabilities
from voxseg.losses import build_loss, deep_supervision_loss
from voxseg.train import checkpoint as ckpt
from voxseg.train.checkpoint import unwrap
from voxseg.train.distributed import DistContext, all_sum, any_rank, barrier

BEST = "model.safetensors"
LAST = "last.safetensors"
OPTIM = "optimizer.safetensors"
STATE = "state.json"
CONFIG = "config.json"
METRICS = "metrics.csv"
TIME_BUDGET = "time budget"
INTERRUPTED = "interrupted"


@dataclass
class EpochRecord:
    epoch: int
    steps: int
    train_loss: float
    val_loss: float
    val_dice: float
    lr: float
    seconds: float


@dataclass
class TrainState:
    epoch: int = 0
    """Epochs completed."""
    step: int = 0
    best_dice: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0
    elapsed: float = 0.0
    """Training seconds used so far, across resumes."""
    stopped: str = ""
    history: list[EpochRecord] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """SHA-256 of every checkpoint file, checked on resume."""


@dataclass(frozen=True)
class Progress:
    epoch: int
    step: int
    steps: int
    loss: float
    val_dice: float | None
    eta_seconds: float | None


def lr_at(step: int, total: int, base: float, schedule: str) -> float:
    """Pure learning-rate function: constant, or cosine to 1 % of `base` over `total` steps."""
    if schedule == "constant" or total <= 0:
        return base
    t = min(step / total, 1.0)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=0.99, nesterov=True, weight_decay=cfg.weight_decay
    )


@dataclass(frozen=True)
class ValResult:
    loss: float
    dice: float
    """Mean over validation cases of per-case Dice (computed from summed confusion counts)."""
    counts: np.ndarray
    """(n_cases, 3) true positives, false positives, false negatives."""
    losses: np.ndarray
    """Per-case validation loss."""


def validate(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    config: RunConfig,
    device: torch.device,
    amp: torch.dtype | None,
    pad_value: float,
) -> ValResult:
    model.eval()
    counts = np.zeros((len(cases), 3), dtype=np.float64)
    losses = []
    for i, case in enumerate(cases):
        prob = predict_probabilities(
            model,
            case.image,
            patch_size=config.train.patch_size,
            overlap=0.25,
            device=device,
            amp=amp,
            pad_value=pad_value,
        )
        target = np.asarray(case.label, dtype=bool)
        pred = prob >= 0.5
        counts[i] = (np.sum(pred & target), np.sum(pred & ~target), np.sum(~pred & target))
        p = np.clip(prob, 1e-6, 1 - 1e-6)
        bce = -float(np.mean(np.where(target, np.log(p), np.log1p(-p))))
        soft = 2 * float(np.sum(prob * target)) / (float(prob.sum()) + float(target.sum()) + 1e-5)
        losses.append(bce + (1 - soft) if config.train.loss == "dice_bce" else bce)
    model.train()
    losses = np.asarray(losses, dtype=np.float64)
    return ValResult(
        float(losses.mean()) if losses.size else 0.0, dice_from_counts(counts), counts, losses
    )


def validate_sharded(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    config: RunConfig,
    amp: torch.dtype | None,
    pad_value: float,
    dist: DistContext,
) -> ValResult:
    """Each rank validates every world-size-th case; per-case confusion counts are summed
    across ranks (never averaged Dice values), so every rank reaches the same decision."""
    inner = unwrap(model)
    mine = list(range(dist.rank, len(cases), dist.world_size))
    local = validate(inner, [cases[i] for i in mine], config, dist.device, amp, pad_value)
    counts = np.zeros((len(cases), 3))
    losses = np.zeros(len(cases))
    counts[mine] = local.counts
    losses[mine] = local.losses
    counts, losses = all_sum(dist, counts), all_sum(dist, losses)
    return ValResult(float(losses.mean()), dice_from_counts(counts), counts, losses)


def dice_from_counts(counts: np.ndarray) -> float:
    """Mean per-case Dice; a case with no foreground anywhere counts as 1 (both empty)."""
    if len(counts) == 0:
        return 0.0
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    denom = 2 * tp + fp + fn
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)))


def pad_value_for(config: RunConfig) -> float:
    """Normalised value of the lowest HU in the window: what air looks like to the network."""
    p = config.preprocess
    return (p.window[0] - p.mean) / max(p.std, 1e-6)


def _write_metrics(run_dir: Path, history: list[EpochRecord]) -> None:
    from voxseg.atomic import write_text

    cols = list(EpochRecord.__dataclass_fields__)
    lines = [",".join(cols)]
    for rec in history:
        lines.append(
            ",".join(
                f"{getattr(rec, c):.6g}"
                if isinstance(getattr(rec, c), float)
                else str(getattr(rec, c))
                for c in cols
            )
        )
    write_text(run_dir / METRICS, "\n".join(lines) + "\n")


def _save_state(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState
) -> None:
    tensors, plain = ckpt.optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    state.files[LAST] = ckpt.save_model(run_dir / LAST, model)
    state.files[OPTIM] = ckpt.save_tensors(run_dir / OPTIM, tensors)
    data = asdict(state)
    data["optimizer"] = plain
    ckpt.write_json(run_dir / STATE, data)


def load_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore a run saved by `_save_state` (used by --resume)."""
    import json

    path = run_dir / STATE
    if not path.is_file():
        raise ConfigError(f"{run_dir}: nothing to resume (no {STATE}); start without --resume")
    data = json.loads(path.read_text())
    files = data.get("files", {})
    ckpt.load_model_weights(run_dir / LAST, model, files.get(LAST))
    tensors = ckpt.load_tensors(run_dir / OPTIM, files.get(OPTIM))
    torch.set_rng_state(tensors.pop("rng.torch"))
    ckpt.restore_optimizer(optimizer, tensors, data.pop("optimizer"))
    data["history"] = [EpochRecord(**h) for h in data["history"]]
    return TrainState(**data)


def train(
    model: nn.Module,
    config: RunConfig,
    train_cases: Sequence[PreparedCase],
    val_cases: Sequence[PreparedCase],
    run_dir: Path,
    *,
    device: torch.device,
    resume: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
    dist: DistContext | None = None,
    should_stop: Callable[[bool], bool] | None = None,
) -> TrainState:
    """Train `model` in place; on return it holds the best epoch's weights."""
    tc = config.train
    dist = dist or DistContext(0, 1, device)
    is_main = dist.is_main
    optimizer = build_optimizer(model, tc)
    state = load_state(run_dir, model, optimizer) if resume else TrainState()
    if state.stopped in (TIME_BUDGET, INTERRUPTED):
        state.stopped = ""  # resuming continues a run that was cut short, not one that converged
    loss_fn = build_loss(tc.loss)
    amp = autocast_dtype(tc.precision, device)
    pad = pad_value_for(config)
    sampler = SamplerConfig(
        batch_size=tc.batch_size,
        patch_size=tc.patch_size,
        foreground_oversample=tc.foreground_oversample,
        augment=tc.augment,
        seed=tc.seed,
        steps_per_epoch=tc.steps_per_epoch,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    n_steps = steps_in_epoch(len(train_cases), sampler)
    total_steps = tc.epochs * n_steps
    budget = tc.max_minutes * 60 if tc.max_minutes else math.inf
    started = time.monotonic() - state.elapsed
    step_seconds = None
    val_seconds = 0.0
    model.train()

    def out_of_time(extra: float = 0.0) -> bool:
        late = time.monotonic() - started + extra > budget
        if should_stop:
            late = should_stop(late)
        return any_rank(dist, late) if budget < math.inf or should_stop else late

    while state.epoch < tc.epochs and not state.stopped:
        epoch = state.epoch + 1
        t0 = time.monotonic()
        losses = []
        for i, batch in enumerate(epoch_batches(train_cases, epoch, sampler, pad)):
            # Leave room for the validation that must follow the last step.
            if out_of_time((step_seconds or 0.0) + val_seconds):
                state.stopped = TIME_BUDGET
                break
            ts = time.monotonic()
            lr = lr_at(state.step, total_steps, tc.lr, tc.schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = torch.from_numpy(batch.image).to(device, non_blocking=True)
            y = torch.from_numpy(batch.label).to(device, non_blocking=True)
            with autocast(device, amp):
                out = model(x)
            if isinstance(out, list | tuple):
                loss = deep_supervision_loss(loss_fn, [o.float() for o in out], y)
            else:
                loss = loss_fn(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state.step += 1
            losses.append(float(loss.detach()))
            dt = time.monotonic() - ts
            step_seconds = dt if step_seconds is None else 0.8 * step_seconds + 0.2 * dt
            if on_progress and is_main:
                remaining = min(
                    (total_steps - state.step) * step_seconds, budget - (time.monotonic() - started)
                )
                on_progress(
                    Progress(
                        epoch,
                        i + 1,
                        n_steps,
                        float(np.mean(losses[-20:])),
                        state.history[-1].val_dice if state.history else None,
                        remaining,
                    )
                )
        if not losses:
            break
        tv = time.monotonic()
        val = validate_sharded(model, val_cases, config, amp, pad, dist) if val_cases else None
        val_seconds = time.monotonic() - tv
        dice = val.dice if val else -float(np.mean(losses))
        state.epoch = epoch
        state.elapsed = time.monotonic() - started
        state.history.append(
            EpochRecord(
                epoch,
                len(losses),
                float(np.mean(losses)),
                val.loss if val else float("nan"),
                dice if val else float("nan"),
                lr,
                time.monotonic() - t0,
            )
        )
        if dice > state.best_dice:
            state.best_dice, state.best_epoch, state.bad_epochs = dice, epoch, 0
            if is_main:
                state.files[BEST] = ckpt.save_model(run_dir / BEST, model)
        else:
            state.bad_epochs += 1
            if tc.patience and state.bad_epochs >= tc.patience:
                state.stopped = (
                    f"early stopping (no better validation Dice for {tc.patience} epochs)"
                )
        if on_progress and is_main:
            on_progress(
                Progress(
                    epoch, len(losses), n_steps, float(np.mean(losses)), dice if val else None, None
                )
            )
        if is_main:
            _save_state(run_dir, model, optimizer, state)
            _write_metrics(run_dir, state.history)
    if state.epoch >= tc.epochs and not state.stopped:
        state.stopped = "epoch limit"
    if is_main:
        _save_state(run_dir, model, optimizer, state)
    barrier(dist)  # rank 0 has written the best weights
    if (run_dir / BEST).is_file():
        ckpt.load_model_weights(run_dir / BEST, model)  # restore the best epoch's weights
    return state


def replace_train(config: RunConfig, **changes) -> RunConfig:
    return replace(config, train=replace(config.train, **changes))
