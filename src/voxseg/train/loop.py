"""The training loop, as functions: one epoch, validation, early stopping, checkpoints.

Only rank 0 writes files. Everything needed to continue exactly (weights, optimizer, epoch,
early-stopping state, history) is saved at every epoch boundary; batches are a pure function
of (seed, epoch, step), so a resumed run continues on the batches it would have seen.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from voxseg.atomic import remove_stale_parts
from voxseg.config import RunConfig
from voxseg.data.cache import PreparedCase
from voxseg.data.dataset import SamplerConfig, epoch_batches, steps_in_epoch
from voxseg.errors import ConfigError, VoxsegError
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
GRAD_CLIP = 12.0
MAX_BAD_STEPS = 20
"""Consecutive non-finite losses after which training is declared diverged."""
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
    epoch_step: int = 0
    """Steps of the next epoch already done (a run interrupted mid-epoch resumes there)."""
    epoch_losses: list[float] = field(default_factory=list)
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


def predict_case(
    model: nn.Module,
    case: PreparedCase,
    config: RunConfig,
    device: torch.device,
    amp: torch.dtype | None,
    pad_value: float,
) -> np.ndarray:
    """Probabilities on a prepared case's network grid, as `voxseg predict` would compute them."""
    return predict_probabilities(
        model,
        case.image,
        patch_size=config.train.patch_size,
        overlap=config.infer.overlap,
        device=device,
        amp=amp,
        pad_value=pad_value,
    )


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
        prob = predict_case(model, case, config, device, amp, pad_value)
        target = np.asarray(case.label, dtype=bool)
        pred = prob >= config.infer.threshold
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
    """Write the resumable state; `state.json` is the commit point.

    Each file is rotated to `*.prev.*` before it is replaced, and state.json records the hash
    of every file, so a kill at any moment leaves one state whose files are all intact.
    """
    tensors, plain = ckpt.optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    ckpt.rotate(run_dir / LAST)
    state.files[LAST] = ckpt.save_model(run_dir / LAST, model)
    ckpt.rotate(run_dir / OPTIM)
    state.files[OPTIM] = ckpt.save_tensors(run_dir / OPTIM, tensors)
    data = asdict(state)
    data["optimizer"] = plain
    ckpt.rotate(run_dir / STATE)
    ckpt.write_json(run_dir / STATE, data)


@dataclass(frozen=True)
class ResumePoint:
    data: dict
    files: dict[str, Path]
    note: str = ""


def _resume_point(run_dir: Path) -> ResumePoint:
    """The newest saved state whose checkpoint files are intact (hash as recorded)."""
    import json

    problems = []
    for path in (run_dir / STATE, ckpt.previous(run_dir / STATE)):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path.name}: {exc.__class__.__name__}")
            continue
        found = {
            name: ckpt.find_intact(run_dir / name, sha)
            for name, sha in data["files"].items()
            if name in (LAST, OPTIM)
        }
        bad = [name for name, f in found.items() if f is None]
        if not bad and len(found) == 2:
            note = ""
            if path.name != STATE:
                note = f"latest checkpoint damaged ({'; '.join(problems)}); "
                note += f"resuming from epoch {data['epoch']}"
            return ResumePoint(data, found, note)
        problems.append(f"{', '.join(bad) or 'files'} of {path.name} corrupted or missing")
    if not (run_dir / STATE).exists():
        raise ConfigError(f"{run_dir}: nothing to resume (no {STATE}); start without --resume")
    raise ConfigError(
        f"{run_dir}: no intact checkpoint to resume ({'; '.join(problems)}); "
        "start afresh with --overwrite"
    )


def load_state(
    run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[TrainState, str]:
    """Restore a run saved by `_save_state` (used by --resume); the note says if it fell back."""
    point = _resume_point(run_dir)
    data = dict(point.data)
    ckpt.load_model_weights(point.files[LAST], model)
    tensors = ckpt.load_tensors(point.files[OPTIM])
    torch.set_rng_state(tensors.pop("rng.torch"))
    ckpt.restore_optimizer(optimizer, tensors, data.pop("optimizer"))
    data["history"] = [EpochRecord(**h) for h in data["history"]]
    return TrainState(**data), point.note


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host array -> device tensor; through pinned memory on CUDA so the copy is asynchronous."""
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batch,
    device: torch.device,
    amp: torch.dtype | None,
    lr: float,
    scaler: torch.amp.GradScaler | None = None,
) -> float:
    """One optimizer step; `scaler` is needed for fp16 autocast (bf16 and fp32 need none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = to_device(batch.image, device), to_device(batch.label, device)
    if device.type == "cpu":  # oneDNN's channels-last kernels train ~1.2-1.5x faster
        x = x.contiguous(memory_format=torch.channels_last_3d)
    with autocast(device, amp):
        out = model(x)
    if isinstance(out, list | tuple):
        loss = deep_supervision_loss(loss_fn, [o.float() for o in out], y)
    else:
        loss = loss_fn(out.float(), y)
    optimizer.zero_grad(set_to_none=True)
    value = float(loss.detach())
    if not math.isfinite(value):
        return value  # skip the update: one bad step must not poison the weights
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    # nnU-Net's clip: keeps the rare huge gradient (bf16, tiny patches) from diverging.
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return value


def _record_epoch(
    state: TrainState, epoch: int, losses, val: ValResult | None, lr, seconds
) -> float:
    """Append the epoch to the history and update early stopping; returns the epoch's score."""
    score = val.dice if val else -float(np.mean(losses))  # no validation: lowest loss is best
    state.history.append(
        EpochRecord(
            epoch,
            len(losses),
            float(np.mean(losses)),
            val.loss if val else float("nan"),
            val.dice if val else float("nan"),
            lr,
            seconds,
        )
    )
    state.epoch, state.epoch_step, state.epoch_losses = epoch, 0, []
    return score


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
    log: Callable[[str], None] | None = None,
    should_stop: Callable[[bool], bool] | None = None,
    interrupt: threading.Event | None = None,
) -> TrainState:
    """Train `model` in place; on return it holds the best epoch's weights.

    `interrupt` (set by a Ctrl-C handler) ends training after the current step with a
    checkpoint that resumes mid-epoch exactly; `should_stop` lets tests cut a run short.
    """
    tc = config.train
    dist = dist or DistContext(0, 1, device)
    is_main = dist.is_main
    optimizer = build_optimizer(model, tc)
    if is_main:
        remove_stale_parts(run_dir)  # left by a run killed while writing a checkpoint
    state, note = load_state(run_dir, model, optimizer) if resume else (TrainState(), "")
    if note and log and is_main:
        log(note)
    if state.stopped in (TIME_BUDGET, INTERRUPTED):
        state.stopped = ""  # resuming continues a run that was cut short, not one that converged
    loss_fn = build_loss(tc.loss)
    amp = autocast_dtype(tc.precision, device)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: autotuned kernels pay off
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
    step_seconds = val_seconds = 0.0
    bad_steps = 0
    model.train()

    def stop_reason() -> str:
        """Checked before every step; every rank must agree or DDP would hang."""
        # Leave room for the step and for the validation that must follow it.
        late = time.monotonic() - started + step_seconds + val_seconds > budget
        if should_stop:
            late = should_stop(late)
        halted = interrupt is not None and interrupt.is_set()
        if dist.active:
            late, halted = any_rank(dist, late), any_rank(dist, halted)
        return INTERRUPTED if halted else TIME_BUDGET if late else ""

    while state.epoch < tc.epochs and not state.stopped:
        epoch = state.epoch + 1
        t0 = time.monotonic()
        losses = list(state.epoch_losses)
        lr = lr_at(state.step, total_steps, tc.lr, tc.schedule)
        for i, batch in enumerate(
            epoch_batches(train_cases, epoch, sampler, pad, start=state.epoch_step),
            start=state.epoch_step,
        ):
            state.stopped = stop_reason()
            if state.stopped:
                state.epoch_step, state.epoch_losses = i, losses
                break
            ts = time.monotonic()
            lr = lr_at(state.step, total_steps, tc.lr, tc.schedule)
            value = train_step(model, optimizer, loss_fn, batch, device, amp, lr, scaler)
            state.step += 1
            bad_steps = 0 if math.isfinite(value) else bad_steps + 1
            if bad_steps >= MAX_BAD_STEPS:
                raise VoxsegError(
                    f"training diverged: {bad_steps} steps in a row gave a non-finite loss; "
                    "retry with --precision fp32 or a lower --lr"
                )
            if math.isfinite(value):
                losses.append(value)
            dt = time.monotonic() - ts
            step_seconds = dt if not step_seconds else 0.8 * step_seconds + 0.2 * dt
            if on_progress and is_main:
                left = min((total_steps - state.step) * step_seconds, budget - (ts - started))
                last_dice = state.history[-1].val_dice if state.history else None
                on_progress(
                    Progress(
                        epoch,
                        i + 1,
                        n_steps,
                        float(np.mean(losses[-20:] or [math.nan])),
                        last_dice,
                        left,
                    )
                )
        state.elapsed = time.monotonic() - started
        if state.stopped == INTERRUPTED or not losses:
            break  # an interrupted epoch is finished on --resume, not validated half-done
        tv = time.monotonic()
        val = validate_sharded(model, val_cases, config, amp, pad, dist) if val_cases else None
        val_seconds = time.monotonic() - tv
        score = _record_epoch(state, epoch, losses, val, lr, time.monotonic() - t0)
        if score > state.best_dice:
            state.best_dice, state.best_epoch, state.bad_epochs = score, epoch, 0
            if is_main:
                state.files[BEST] = ckpt.save_model(run_dir / BEST, model)
        else:
            state.bad_epochs += 1
            if tc.patience and state.bad_epochs >= tc.patience and not state.stopped:
                state.stopped = (
                    f"early stopping (no better validation Dice for {tc.patience} epochs)"
                )
        if on_progress and is_main:
            dice = val.dice if val else None
            on_progress(Progress(epoch, len(losses), n_steps, float(np.mean(losses)), dice, None))
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
