"""`voxseg train`: options -> resolved config -> prepared cases -> the loop -> run folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from voxseg.config import ModelConfig, RunConfig
from voxseg.data.cache import PreparedCase, default_cache_dir, load_or_prepare
from voxseg.data.discovery import discover, require_labelled, split_cases
from voxseg.errors import ConfigError, OutputExistsError
from voxseg.train.distributed import DistContext, barrier, init_from_env, shutdown, wrap
from voxseg.train.loop import BEST, CONFIG, LAST, METRICS, OPTIM, STATE, TrainState, train

RUN_FILES = (
    BEST,
    LAST,
    OPTIM,
    STATE,
    CONFIG,
    METRICS,
    "curves.png",
    "last.prev.safetensors",
    "optimizer.prev.safetensors",
    "state.prev.json",
)


@dataclass(frozen=True)
class TrainOptions:
    data: Path
    out: Path
    model: str | None = None
    preset: str | None = None
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    loss: str | None = None
    optimizer: str | None = None
    val_fraction: float | None = None
    val_cases: tuple[str, ...] = ()
    patience: int | None = None
    max_minutes: float | None = None
    steps_per_epoch: int | None = None
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    foreground: tuple[int, ...] | None = None
    cache_dir: Path | None = None
    precision: str | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is available here; use --device cpu")
    return device


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (out / CONFIG).is_file():
            raise ConfigError(f"{out}: no {CONFIG} to resume from; start without --resume")
        return
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{out}: already holds a run ({', '.join(existing[:3])}); pass --resume to continue it "
            "or --overwrite to start afresh"
        )
    for f in existing:
        (out / f).unlink()
    out.mkdir(parents=True, exist_ok=True)


def apply_overrides(config: RunConfig, o: TrainOptions) -> RunConfig:
    t, p = config.train, config.preprocess
    if o.shape is not None:
        p = replace(p, mode="shape", shape=tuple(o.shape), spacing=None)
        t = replace(t, patch_size=None)
    if o.spacing is not None:
        p = replace(p, mode="spacing", spacing=tuple(o.spacing), shape=None)
    changes = {
        "epochs": o.epochs,
        "batch_size": o.batch_size,
        "lr": o.lr,
        "loss": o.loss,
        "optimizer": o.optimizer,
        "val_fraction": o.val_fraction,
        "patience": o.patience,
        "max_minutes": o.max_minutes,
        "steps_per_epoch": o.steps_per_epoch,
        "precision": o.precision,
    }
    t = replace(t, seed=o.seed, **{k: v for k, v in changes.items() if v is not None})
    if o.val_cases:
        t = replace(t, val_cases=tuple(o.val_cases))
    return replace(config, preprocess=p, train=t)


def resolve_config(
    o: TrainOptions, cases, device: torch.device, log: Callable[[str], None]
) -> RunConfig:
    from voxseg.config import DataConfig
    from voxseg.train.plan import plan_default, seed_preset

    base = RunConfig(data=DataConfig(foreground=o.foreground))
    if o.preset not in (None, "seed", "default"):
        raise ConfigError(
            f"--preset {o.preset!r}: choose 'seed' or leave it out for the planned default"
        )
    if o.preset == "seed":
        config = seed_preset(base)
    else:
        if o.model:
            base = replace(base, model=ModelConfig(name=o.model))
        if o.model == "seed" or (o.shape is not None and o.spacing is None):
            config = base  # explicit grid: nothing to plan
        else:
            plan = plan_default(
                cases, foreground=o.foreground, max_minutes=o.max_minutes, device=device, base=base
            )
            for note in plan.notes:
                log(f"plan: {note}")
            config = plan.config
    config = apply_overrides(config, o).validate()
    if config.preprocess.mode == "shape" and config.preprocess.shape is None:
        config = replace(
            config, preprocess=replace(config.preprocess, shape=(128, 128, 128), spacing=None)
        )
    if config.preprocess.mode == "spacing" and config.train.patch_size is None:
        raise ConfigError(
            "resampling to a spacing needs patches; give --shape for whole-volume training"
        )
    return config


def prepare_cases(
    cases, config: RunConfig, cache_dir: Path | None, advance: Callable[[], None]
) -> list[PreparedCase]:
    out = []
    for case in cases:
        out.append(load_or_prepare(case, config.preprocess, config.data.foreground, cache_dir))
        advance()
    return out


def run_training(o: TrainOptions, ui, interrupt=None) -> tuple[RunConfig, TrainState]:
    """The whole `voxseg train` job; `ui` gives `log(str)`, `task(name, total)`, `progress`.

    Under torchrun every process runs this; rank 0 plans, writes and logs, the others wait at
    barriers and then read what rank 0 wrote, so all ranks train with one configuration.
    """
    from voxseg.models import build_model

    dist = init_from_env(resolve_device(o.device))
    try:
        return _run(o, ui, dist, build_model, interrupt)
    finally:
        shutdown()


def _run(
    o: TrainOptions, ui, dist: DistContext, build_model, interrupt
) -> tuple[RunConfig, TrainState]:
    log = ui.log if dist.is_main else (lambda _m: None)
    dataset = discover(o.data)
    if dist.is_main:  # the others read the configuration rank 0 resolved
        prepare_run_dir(o.out, o.resume, o.overwrite)
        if not o.resume:
            resolve_config(o, require_labelled(dataset, 2), dist.device, log).save(o.out / CONFIG)
    barrier(dist)
    config = RunConfig.load(o.out / CONFIG)
    if o.resume and o.max_minutes is not None:
        config = replace(config, train=replace(config.train, max_minutes=o.max_minutes))
    labelled = require_labelled(
        dataset, 2 if config.train.val_fraction > 0 or config.train.val_cases else 1
    )
    train_cases, val_cases = split_cases(
        labelled,
        val_fraction=config.train.val_fraction,
        val_cases=config.train.val_cases,
        seed=config.train.seed,
    )
    log(
        f"{len(train_cases)} training and {len(val_cases)} validation cases "
        f"from {dataset.root} ({dataset.layout})"
        + (f" on {dist.world_size} processes" if dist.active else "")
    )
    cache_dir = o.cache_dir or default_cache_dir()
    cases = [*train_cases, *val_cases]
    if dist.is_main:  # rank 0 fills the cache; the others then only memory-map it
        prepared = prepare_cases(cases, config, cache_dir, ui.task("preparing cases", len(cases)))
    barrier(dist)
    if not dist.is_main:
        prepared = prepare_cases(cases, config, cache_dir, lambda: None)
    train_prepared, val_prepared = prepared[: len(train_cases)], prepared[len(train_cases) :]

    torch.manual_seed(config.train.seed)
    model = build_model(config.model.name, **config.model.options)
    grid = config.train.patch_size or config.preprocess.shape
    model.check_shape(tuple(grid))
    model.to(dist.device)
    if dist.device.type == "cpu":
        model.to(memory_format=torch.channels_last_3d)  # see train_step
    state = train(
        wrap(model, dist),
        config,
        train_prepared,
        val_prepared,
        o.out,
        device=dist.device,
        resume=o.resume,
        on_progress=ui.progress,
        dist=dist,
        log=log,
        interrupt=interrupt,
    )
    if dist.is_main:
        from voxseg.report import plot_curves

        plot_curves(state.history, o.out / "curves.png")
        if val_prepared and state.stopped != "interrupted":
            config = _choose_postprocessing(model, config, val_prepared, dist.device, o.out, log)
    return config, state


def _choose_postprocessing(
    model, config: RunConfig, val_cases, device, out: Path, log
) -> RunConfig:
    """Pick keep-largest-components on the validation cases and record it in config.json."""
    from voxseg.inference import autocast_dtype
    from voxseg.train.loop import pad_value_for
    from voxseg.train.postprocess import choose_keep_largest

    amp = autocast_dtype(config.train.precision, device)
    choice = choose_keep_largest(model, val_cases, config, device, amp, pad_value_for(config))
    scores = ", ".join(
        f"{'all' if n == 0 else f'largest {n}'}: {d:.4f}" for n, d in choice.dice.items()
    )
    log(f"post-processing on validation ({scores}) -> keep_largest={choice.keep_largest}")
    config = replace(config, infer=replace(config.infer, keep_largest=choice.keep_largest))
    config.save(out / CONFIG)
    return config
