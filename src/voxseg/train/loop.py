"""The training loop, as functions: steps, epochs, early stopping, checkpoints.

Only rank 0 writes files. Everything needed to continue exactly (weights, optimizer, epoch,
early-stopping state, history) is saved at every epoch boundary; batches are a pure function
of (seed, epoch, step), so a resumed run continues on the batches it would have seen.

With a time budget (`max_minutes`) the clock, not a forecast, decides: training runs until
the budget less the final validation is spent, the learning rate follows the elapsed share of
the budget, and epochs adapt their length so validation stays a bounded share of the time.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from voxseg.atomic import remove_stale_parts
from voxseg.config import RunConfig, TrainConfig
from voxseg.distributed import DistContext, all_sum, barrier
from voxseg.errors import VoxsegError
from voxseg.losses import build_loss, deep_supervision_loss
from voxseg.progress import ProgressFn, Step, ignore
from voxseg.run_folder import EpochRecord, RunFolder, TrainState
from voxseg.runtime import autocast, autocast_dtype, to_device
from voxseg.train.prepared import PreparedCase
from voxseg.train.resume import load_checkpoint, save_checkpoint
from voxseg.train.sampler import Batch, SamplerConfig, epoch_batches, steps_in_epoch
from voxseg.train.threads import ThreadTuner
from voxseg.train.validation import ValResult, validate_sharded

GRAD_CLIP = 12.0
MAX_BAD_STEPS = 20
"""Consecutive non-finite losses after which training is declared diverged."""
VAL_SHARE = 0.08
"""With a time budget, epochs last so that validation takes about this share of the time:
below the 10 % aimed at, as a validation's time varies with the machine's load."""
MIN_EPOCH_STEPS = 10
MAX_EPOCH_STEPS = 500
MAX_EPOCH_SHARE = 0.15
"""With a time budget, no epoch takes more than this share of it: one slow validation (a
busy moment) must not stretch the next epoch over a large part of the budget."""
TIME_BUDGET = "time budget"
INTERRUPTED = "interrupted"
EPOCH_LIMIT = "epoch limit"


def _nothing(_message: str) -> None:
    pass


@dataclass(frozen=True)
class TrainHooks:
    """How the loop talks to the outside world."""

    on_progress: ProgressFn = ignore
    log: Callable[[str], None] = _nothing
    interrupt: threading.Event | None = None
    """Set by a Ctrl-C handler: stop after the current step with a checkpoint that resumes
    mid-epoch exactly."""
    should_stop: Callable[[bool], bool] | None = None
    """Given whether the budget is spent, decide to stop (tests cut runs short with it)."""
    clock: Callable[[], float] = time.monotonic
    """Seconds from any fixed point: every time decision (budget, schedule, epoch length)
    reads it, so a test drives the budget logic exactly with a fake clock."""


def lr_at(progress: float, base: float, schedule: str) -> float:
    """Pure learning-rate function of the share of training done (steps or time), in [0, 1]:
    constant, or cosine from `base` to 1 % of it."""
    if schedule == "constant":
        return base
    t = min(max(progress, 0.0), 1.0)
    return base * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t)))


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params, decay = model.parameters(), cfg.weight_decay
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.99, nesterov=True, weight_decay=decay)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: nn.Module,
    batch: Batch,
    device: torch.device,
    amp: torch.dtype | None,
    lr: float,
    scaler: torch.amp.GradScaler,
) -> float:
    """One optimizer step; `scaler` only scales under fp16 autocast (built disabled otherwise)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    x, y = to_device(batch.image, device), to_device(batch.label, device)
    if device.type == "cpu":  # oneDNN channels-last: see benchmarks/RESULTS.md, "Levers"
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
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    # nnU-Net's clip: keeps the rare huge gradient (bf16, tiny patches) from diverging.
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    scaler.step(optimizer)
    scaler.update()
    return value


@dataclass
class _Clock:
    """Wall-clock accounting of a run, across resumes."""

    budget: float
    """Seconds (inf without a time budget)."""
    started: float
    now: Callable[[], float] = time.monotonic
    step: float = 0.0
    """Moving average of one step's seconds (compute and data)."""
    val: float = 0.0
    """Seconds of the latest validation."""

    def elapsed(self) -> float:
        return self.now() - self.started

    def training_share(self) -> float:
        """Share of the training time spent (the final validation is not training time)."""
        return self.elapsed() / max(self.budget - self.val, 1e-9)

    def late(self) -> bool:
        """True when one more step and the validation after it would overrun the budget."""
        return self.elapsed() + self.step + self.val > self.budget

    def add_step(self, seconds: float) -> None:
        self.step = seconds if not self.step else 0.8 * self.step + 0.2 * seconds


def epoch_length(tc: TrainConfig, clock: _Clock, planned: int) -> int:
    """Steps of the next epoch: fixed, or with a time budget as many as keep the last
    validation at about VAL_SHARE of the epoch's time."""
    if tc.max_minutes is None or tc.patch_size is None or not clock.val or not clock.step:
        return planned
    steps = clock.val * (1 - VAL_SHARE) / VAL_SHARE / clock.step
    steps = min(steps, MAX_EPOCH_SHARE * clock.budget / clock.step, MAX_EPOCH_STEPS)
    return int(max(MIN_EPOCH_STEPS, round(steps)))


def _update_best(state: TrainState, tc: TrainConfig, epoch: int, val: ValResult | None, losses):
    """Smooth the epoch's score, track the best and count epochs without improvement;
    returns True when this epoch is the new best."""
    score = val.mean_dice if val else -float(np.mean(losses))  # no validation: lowest loss
    if state.smoothed is not None and tc.val_smoothing:
        score = tc.val_smoothing * state.smoothed + (1 - tc.val_smoothing) * score
    state.smoothed = score
    if score > state.best_score:
        state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        state.best_dice = val.mean_dice if val else math.nan
        regions = range(val.dice.shape[1]) if val else ()
        state.best_region_dice = [float(d) for d in val.region_dice()] if val else []
        state.best_postprocess = [
            {str(n): d for n, d in val.postprocess_means(r).items()} for r in regions
        ]
        return True
    state.bad_epochs += 1
    if tc.patience and state.bad_epochs >= tc.patience and not state.stopped:
        state.stopped = f"early stopping (no better validation Dice for {tc.patience} epochs)"
    return False


def train(
    model: nn.Module,
    config: RunConfig,
    train_cases: Sequence[PreparedCase],
    val_cases: Sequence[PreparedCase],
    run: RunFolder,
    *,
    device: torch.device,
    resume: bool = False,
    dist: DistContext | None = None,
    hooks: TrainHooks | None = None,
) -> TrainState:
    """Train `model` in place; on return it holds the best epoch's weights."""
    tc = config.train
    hooks = hooks or TrainHooks()
    dist = dist or DistContext(0, 1, device)
    optimizer = build_optimizer(model, tc)
    if dist.is_main:
        remove_stale_parts(run.root)  # left by a run killed while writing a checkpoint
    state, note = load_checkpoint(run, model, optimizer) if resume else (TrainState(), "")
    if note and dist.is_main:
        hooks.log(note)
    if state.stopped in (TIME_BUDGET, INTERRUPTED):
        state.stopped = ""  # resuming continues a run that was cut short, not one that converged
    loss_fn = build_loss(tc.loss, tc.batch_dice)
    amp = autocast_dtype(tc.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch size: autotuned kernels pay off
    pad = config.preprocess.pad_value
    sampler = SamplerConfig(
        batch_size=tc.batch_size,
        patch_size=tc.patch_size,
        foreground_oversample=tc.foreground_oversample,
        regions=len(config.data.targets()),
        augment=tc.augment,
        seed=tc.seed,
        steps_per_epoch=tc.steps_per_epoch,
        rank=dist.rank,
        world_size=dist.world_size,
    )
    planned = steps_in_epoch(len(train_cases), sampler)
    timed = tc.max_minutes is not None
    now = hooks.clock
    clock = _Clock(tc.max_minutes * 60 if timed else math.inf, now() - state.elapsed, now)
    if state.history and val_cases and math.isfinite(state.history[-1].val_seconds):
        clock.val = state.history[-1].val_seconds
    bad_steps = 0
    tuner = ThreadTuner.for_device(device) if timed else None  # epoch mode stays bit-exact
    model.train()

    def checkpoint() -> tuple[str, float]:
        """Before every step: the stop decision and the elapsed share of the time budget.

        Every rank must take the same decision (or DDP hangs) and use the same learning rate
        (or the replicas drift apart): flags are OR-ed and the share is rank 0's reading.
        """
        late = clock.late()
        if hooks.should_stop:
            late = hooks.should_stop(late)
        halted = hooks.interrupt is not None and hooks.interrupt.is_set()
        share = clock.training_share() if timed else 0.0
        if dist.active:
            mine = [float(late), float(halted), share if dist.is_main else 0.0]
            late, halted, share = all_sum(dist, np.array(mine))
        return (INTERRUPTED if halted else TIME_BUDGET if late else ""), float(share)

    def progress(step: int, n_steps: int, share: float) -> float:
        """Share of training done: of the epochs, or of the time when that is further along."""
        return max((state.epoch + step / n_steps) / tc.epochs, share)

    while state.epoch < tc.epochs and not state.stopped:
        epoch = state.epoch + 1
        t0 = now()
        if not state.epoch_step:
            state.epoch_steps = epoch_length(tc, clock, planned)
            if dist.active:  # rank 0's clock decides, so every rank runs the same steps
                mine = state.epoch_steps if dist.is_main else 0
                state.epoch_steps = int(all_sum(dist, np.array([float(mine)]))[0])
        n_steps = state.epoch_steps or planned
        losses = list(state.epoch_losses)
        lr = lr_at(progress(state.epoch_step, n_steps, 0.0), tc.lr, tc.schedule)
        step_s = data_s = 0.0
        batches = epoch_batches(
            train_cases, epoch, sampler, pad, start=state.epoch_step, steps=n_steps
        )
        for i in range(state.epoch_step, n_steps):
            state.stopped, share = checkpoint()
            if state.stopped:
                state.epoch_step, state.epoch_losses = i, losses
                break
            ts = now()
            batch = next(batches)
            tb = now()
            lr = lr_at(progress(i, n_steps, share), tc.lr, tc.schedule)
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
            te = now()
            data_s, step_s = data_s + tb - ts, step_s + te - tb
            clock.add_step(te - ts)
            if tuner is not None and tuner.observe(te - ts, state.step) and dist.is_main:
                hooks.log(f"{tuner.current} intra-op threads are faster now (busy machine?)")
            if dist.is_main and i + 1 < n_steps:  # the epoch's end is reported after validation
                hooks.on_progress(
                    Step(f"epoch {epoch}", i + 1, n_steps, _status(state, losses, clock))
                )
        state.elapsed = clock.elapsed()
        if state.stopped == INTERRUPTED or not losses:
            break  # an interrupted epoch is finished on --resume, not validated half-done
        tv = now()
        val = validate_sharded(model, val_cases, config, amp, dist) if val_cases else None
        clock.val = now() - tv
        if _update_best(state, tc, epoch, val, losses) and dist.is_main:
            run.save_best_weights(model, state)
        state.elapsed = clock.elapsed()
        state.history.append(
            EpochRecord(
                epoch=epoch,
                steps=len(losses),
                train_loss=float(np.mean(losses)),
                val_loss=val.mean_loss if val else math.nan,
                val_dice=val.mean_dice if val else math.nan,
                val_score=float(state.smoothed),
                lr=lr,
                seconds=now() - t0,
                step_seconds=step_s,
                data_seconds=data_s,
                val_seconds=clock.val,
                elapsed=state.elapsed,
            )
        )
        state.epoch, state.epoch_step, state.epoch_losses = epoch, 0, []
        if dist.is_main:
            hooks.on_progress(
                Step(f"epoch {epoch}", n_steps, n_steps, _status(state, losses, clock))
            )
            save_checkpoint(run, model, optimizer, state)
            run.write_metrics(state.history)
    if tuner is not None:
        tuner.restore()
    if state.epoch >= tc.epochs and not state.stopped:
        state.stopped = EPOCH_LIMIT
    if dist.is_main:
        save_checkpoint(run, model, optimizer, state)
    barrier(dist)  # rank 0 has written the best weights
    if run.best_weights.is_file():
        run.load_best_weights(model)  # restore the best epoch's weights
    return state


def _status(state: TrainState, losses: list[float], clock: _Clock) -> str:
    loss = float(np.mean(losses[-20:])) if losses else math.nan
    dice = state.history[-1].val_dice if state.history else math.nan
    text = f"loss {loss:.4f}  val Dice {'-' if math.isnan(dice) else f'{dice:.3f}'}"
    if math.isfinite(clock.budget):
        text += f"  ~{max(clock.budget - clock.elapsed(), 0) / 60:.1f} min left"
    return text
