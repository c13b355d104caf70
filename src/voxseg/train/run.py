"""`voxseg train`: options -> resolved config -> prepared cases -> the loop -> run folder."""

from __future__ import annotations

import contextlib
import math
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voxseg.config import SEED_SHAPE, ModelCard, RunConfig, given_option
from voxseg.data.discovery import Case, discover, require_labelled, split_cases
from voxseg.data.guards import memory_limit
from voxseg.distributed import DistContext, barrier, init_from_env, shutdown, wrap
from voxseg.errors import ConfigError, OutputExistsError
from voxseg.postprocess import choose_keep_largest
from voxseg.progress import ProgressFn, Step, ignore
from voxseg.regions import describe, target_values
from voxseg.run_folder import RunFolder, TrainState, writing
from voxseg.runtime import resolve_device
from voxseg.train.fingerprint import Fingerprint, measure_fingerprint
from voxseg.train.loop import INTERRUPTED, TrainHooks, train
from voxseg.train.plan import plan_default, planned_model, seed_preset
from voxseg.train.prepared import PreparedCase, default_cache_dir, load_or_prepare
from voxseg.train.throughput import Throughput, measure_throughput

RESUMABLE = ("train.max_minutes", "train.epochs", "train.patience")
"""Settings a resumed run may change; any other option must match the saved config."""


@dataclass(frozen=True)
class TrainOptions:
    data: Path
    out: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    """Settings the user gave, as {"section.field": value} (`RunConfig.override` checks them)."""
    preset: str | None = None
    anisotropic: bool = True
    """Plan a thick-slice U-Net topology (1x3x3 kernels, 1x2x2 strides at first) when the
    slices are much thicker than the pixels."""
    budget_grid: bool = True
    """Let a time budget coarsen the planned grid (`plan.budget_case_voxels`)."""
    width: int | None = None
    """U-Net base width for the plan (None: the device class's default)."""
    deep_supervision: bool = False
    """Also train the U-Net's coarser decoder levels on downsampled targets (nnU-Net's way)."""
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    cache_dir: Path | None = None


def _grid_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """What an explicit grid implies: --shape trains whole volumes, --spacing resamples."""
    implied = dict(overrides)
    if overrides.get("preprocess.shape") is not None:
        implied |= {"preprocess.mode": "shape", "train.patch_size": None, "infer.window": None}
        if overrides.get("preprocess.spacing") is None:
            implied["preprocess.spacing"] = None
    elif overrides.get("preprocess.spacing") is not None:
        implied |= {"preprocess.mode": "spacing", "preprocess.shape": None}
    return implied


def check_options(o: TrainOptions) -> RunConfig:
    """Validate every option before any work (a bad number fails before cases are read)."""
    if o.preset not in (None, "seed", "default"):
        raise ConfigError(
            f"--preset {o.preset!r}: choose 'seed' or leave it out for the planned default"
        )
    memory_limit()
    wanted = RunConfig().override(_grid_overrides(o.overrides), complete=False)
    seed = o.preset == "seed" or wanted.model.name == "seed"
    if seed and wanted.data.regions:
        raise ConfigError(
            "--regions needs the U-Net (the seed network has one output); "
            "drop --preset seed / --model seed"
        )
    if seed and o.deep_supervision:
        raise ConfigError("--deep-supervision needs the U-Net; drop --preset seed / --model seed")
    return wanted


def resolve_config(
    o: TrainOptions,
    wanted: RunConfig,
    fingerprint: Fingerprint,
    device: torch.device,
    log: Callable[[str], None],
) -> tuple[RunConfig, Throughput | None]:
    """The run's configuration, and the throughput reading when the plan needed one.
    `wanted` is what `check_options` made of the options."""
    throughput = None
    base = RunConfig(data=wanted.data, model=wanted.model)
    if o.preset == "seed":
        config = seed_preset(base)
    elif wanted.model.name == "seed" or "preprocess.shape" in o.overrides:
        shape = o.overrides.get("preprocess.shape") or SEED_SHAPE
        config = base.override({"preprocess.mode": "shape", "preprocess.shape": shape})
    else:
        device_class = "gpu" if device.type == "cuda" else "cpu"
        throughput = measure_throughput(
            planned_model(base.model, device_class, width=o.width),
            device,
            o.overrides.get("train.precision", "auto"),
        )
        plan = plan_default(
            fingerprint,
            voxels_per_second=throughput.voxels_per_second,
            max_minutes=o.overrides.get("train.max_minutes"),
            device_class=device_class,
            base=base,
            anisotropic=o.anisotropic,
            width=o.width,
            budget_grid=o.budget_grid,
        )
        low, high = min(throughput.readings), max(throughput.readings)
        log(f"plan: throughput readings {low / 1e6:.2f}-{high / 1e6:.2f} Mvoxel/s")
        for note in plan.notes:
            log(f"plan: {note}")
        config = plan.config
    config = region_dice(config.override(_grid_overrides(o.overrides)), o.overrides)
    options = dict(config.model.options)
    if len(config.data.targets()) > 1:  # one sigmoid output per region
        options["out_channels"] = len(config.data.targets())
    if o.deep_supervision:
        options["deep_supervision"] = True
    if options != config.model.options:
        config = config.override({"model.options": options})
    if config.preprocess.mode == "spacing" and config.train.patch_size is None:
        raise ConfigError(
            "resampling to a spacing needs patches; give --shape for whole-volume training"
        )
    return config, throughput


def region_dice(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Several regions train with the Dice per patch (nnU-Net's 3D `batch_dice=False`) unless
    the user chose: over the batch, one patch's large tumour hides another's small one (+0.035
    tumour Dice over 3 seeds, benchmarks/RESULTS.md). One target keeps the batch's: no gain."""
    if len(config.data.targets()) < 2 or "train.batch_dice" in overrides:
        return config
    return config.override({"train.batch_dice": False})


def prepare_run_dir(run: RunFolder, resume: bool, overwrite: bool) -> None:
    """Refuse to replace a run's results; a folder a failed start left (config, fingerprint,
    no checkpoint) is simply reused."""
    if resume:
        if not run.config_path.is_file():
            raise ConfigError(
                f"{run.root}: no {run.config_path.name} to resume from; start without --resume"
            )
        return
    if run.root.exists() and not run.root.is_dir():
        raise OutputExistsError(f"{run.root}: is a file; give a folder for the run")
    existing = run.files()
    started = run.load_state() is not None or run.best_weights.exists()
    if existing and started and not overwrite:
        names = ", ".join(p.name for p in existing[:3])
        raise OutputExistsError(
            f"{run.root}: already holds a run ({names}); pass --resume to continue it "
            "or --overwrite to start afresh"
        )
    for path in existing:
        path.unlink()
    run.root.mkdir(parents=True, exist_ok=True)


def check_resume(o: TrainOptions, run: RunFolder, cases: Sequence[Case]) -> dict[str, Any]:
    """The settings a resumed run changes; refuse anything that would mix two runs."""
    saved = run.load_config()
    rebuilt = _network_options(o, saved)
    if rebuilt:
        raise ConfigError(
            f"{', '.join(rebuilt)}: a resumed run keeps its network ({run.config_path} has "
            f"{saved.model.name} {saved.model.options or ''}); drop the option, or start afresh "
            "with --overwrite"
        )
    changes = {}
    for key, value in _grid_overrides(o.overrides).items():
        section, _, name = key.partition(".")
        current = getattr(getattr(saved, section), name)
        if isinstance(current, tuple) and value is not None:
            value = tuple(value)
        if value == current:
            continue
        if key not in RESUMABLE:
            raise ConfigError(
                f"{given_option(section, name, value)}: a resumed run keeps its settings "
                f"({run.config_path} has {current!r}); drop the option, or start afresh "
                "with --overwrite"
            )
        changes[key] = value
    record = run.load_fingerprint()
    if record and "fingerprint" in record:
        before = set(record["fingerprint"]["case_ids"])
        now = {c.case_id for c in cases}
        if before != now:
            raise ConfigError(
                f"{o.data}: not the dataset {run.root} was trained on "
                f"({len(before ^ now)} cases differ); resume with the same --data"
            )
        median = np.median(np.asarray(record["fingerprint"]["spacings"], dtype=float), axis=0)
        spacing = saved.preprocess.spacing
        if not o.budget_grid and spacing and not np.allclose(spacing, median, rtol=1e-3):
            raise ConfigError(
                f"--data-grid: a resumed run keeps its grid ({run.config_path} has "
                f"{tuple(spacing)} mm, the data {tuple(round(float(m), 3) for m in median)}); "
                "drop the option, or start afresh with --overwrite"
            )
    return changes


def _network_options(o: TrainOptions, saved: RunConfig) -> list[str]:
    """Planning options given with --resume that would build another network than the saved
    one (they shape the plan, which a resumed run does not redo)."""
    unet = saved.model.name == "unet"
    options = saved.model.options if unet else {}
    given = []
    if o.width is not None and options.get("base_channels") != o.width:
        given.append(f"--width {o.width}")
    if o.deep_supervision and not options.get("deep_supervision"):
        given.append("--deep-supervision")
    if not o.anisotropic and (not unet or "strides" in options):
        given.append("--isotropic")
    if o.preset == "seed" and saved.model.name != "seed":
        given.append("--preset seed")
    return given


def prepare_cases(
    cases: Sequence[Case], config: RunConfig, cache_dir: Path | None, on_progress: ProgressFn
) -> list[PreparedCase]:
    out = []
    for i, case in enumerate(cases):
        out.append(load_or_prepare(case, config.preprocess, config.data.targets(), cache_dir))
        on_progress(Step("preparing cases", i + 1, len(cases)))
    return out


def run_training(o: TrainOptions, hooks: TrainHooks | None = None) -> tuple[RunConfig, TrainState]:
    """The whole `voxseg train` job.

    Under torchrun every process runs this; rank 0 plans, writes and logs, the others wait at
    barriers and then read what rank 0 wrote, so all ranks train with one configuration.
    """
    wanted = check_options(o)
    dist = init_from_env(resolve_device(o.device))
    try:  # rank 0 writes the run folder, and holds its lock
        with writing(RunFolder(o.out), "train") if dist.is_main else contextlib.nullcontext():
            return _run(o, wanted, hooks or TrainHooks(), dist)
    finally:
        shutdown()


def _declared_regions(o: TrainOptions, wanted: RunConfig, dataset, log) -> RunConfig:
    """A dataset whose dataset.json declares regions (nnU-Net's `"kidney": [1, 2]`) trains
    them when the user named no target, as nnU-Net would; and says so."""
    named = {"data.regions", "data.foreground"} & set(o.overrides)
    if not dataset.regions or named or o.resume or o.preset or wanted.model.name == "seed":
        return wanted
    log(
        f"dataset.json declares regions {describe(dataset.regions)}: training them "
        "(--foreground trains one target instead)"
    )
    return wanted.override(
        {
            "data.regions": tuple(r.labels for r in dataset.regions),
            "data.region_names": tuple(r.name for r in dataset.regions),
        },
        complete=False,
    )


def _run(
    o: TrainOptions, wanted: RunConfig, hooks: TrainHooks, dist: DistContext
) -> tuple[RunConfig, TrainState]:
    from voxseg.models import build_model

    log = hooks.log if dist.is_main else (lambda _m: None)
    run = RunFolder(o.out)
    dataset = discover(o.data)
    wanted = _declared_regions(o, wanted, dataset, log)
    foreground = target_values(wanted.data.targets())
    if dist.is_main:  # the others read the configuration rank 0 resolved
        prepare_run_dir(run, o.resume, o.overwrite)
        if o.resume:
            changes = check_resume(o, run, dataset.labelled)
            if changes:
                run.save_config(run.load_config().override(changes))
                log("resuming with " + ", ".join(f"{k} = {v}" for k, v in changes.items()))
        else:
            labelled = require_labelled(dataset, 2)
            # A bad split fails before anything is read.
            split_cases(
                labelled,
                val_fraction=wanted.train.val_fraction,
                val_cases=wanted.train.val_cases,
            )
            fingerprint = measure_fingerprint(labelled, foreground)
            config, throughput = resolve_config(o, wanted, fingerprint, dist.device, log)
            record = {"fingerprint": fingerprint.to_dict()}
            if throughput:
                record["throughput"] = asdict(throughput)
            run.save_fingerprint(record)
            run.save_config(config)
    barrier(dist)
    config = run.load_config()
    tc = config.train
    labelled = require_labelled(dataset, 2 if tc.val_fraction > 0 or tc.val_cases else 1)
    train_cases, val_cases = split_cases(
        labelled, val_fraction=tc.val_fraction, val_cases=tc.val_cases, seed=tc.seed
    )
    log(
        f"{len(train_cases)} training and {len(val_cases)} validation cases "
        f"from {dataset.root} ({dataset.layout})"
        + (f" on {dist.world_size} processes" if dist.active else "")
    )
    cache_dir = o.cache_dir or default_cache_dir()
    cases = [*train_cases, *val_cases]
    if dist.is_main:  # rank 0 fills the cache; the others then only memory-map it
        prepared = prepare_cases(cases, config, cache_dir, hooks.on_progress)
    barrier(dist)
    if not dist.is_main:
        prepared = prepare_cases(cases, config, cache_dir, ignore)
    train_prepared, val_prepared = prepared[: len(train_cases)], prepared[len(train_cases) :]
    regions = config.data.targets()
    for r, region in enumerate(regions):
        if not any(len(c.foreground[r]) for c in train_prepared):
            option = "--regions" if config.data.regions else "--foreground"
            raise ConfigError(
                f"{dataset.root}: no training label has a voxel of {describe((region,))}; "
                f"check {option} against the label values `voxseg info` shows"
            )

    torch.manual_seed(tc.seed)
    model = build_model(config.model.name, **config.model.options)
    model.check_shape(tuple(tc.patch_size or config.preprocess.shape))
    model.to(dist.device)
    if dist.device.type == "cpu":
        model.to(memory_format=torch.channels_last_3d)  # see train_step
    state = train(
        wrap(model, dist),
        config,
        train_prepared,
        val_prepared,
        run,
        device=dist.device,
        resume=o.resume,
        dist=dist,
        hooks=hooks,
    )
    if dist.is_main:
        from voxseg.plots import plot_curves

        plot_curves(state.history, run.curves_path)
        if val_prepared and state.stopped != INTERRUPTED and state.best_postprocess:
            config = _choose_postprocessing(config, state, log)
        config = replace(
            config, card=model_card(config, state, o.data, train_prepared, val_prepared)
        )
        run.save_config(config)
    return config, state


def model_card(
    config: RunConfig,
    state: TrainState,
    data: Path,
    train_cases: Sequence[PreparedCase],
    val_cases: Sequence[PreparedCase],
) -> ModelCard:
    """What a receiver of the model needs: data, target, validation score, versions, command."""
    from voxseg._version import __version__

    spacings = np.array([c.record.canonical_spacing for c in train_cases])
    return ModelCard(
        command=shlex.join(["voxseg", *sys.argv[1:]]) if sys.argv else "",
        voxseg_version=__version__,
        torch_version=torch.__version__,
        created=datetime.now().astimezone().isoformat(timespec="seconds"),
        data=str(Path(data).resolve()),
        train_cases=len(train_cases),
        val_cases=len(val_cases),
        median_spacing=tuple(round(float(s), 4) for s in np.median(spacings, axis=0)),
        target=describe(config.data.targets()),
        val_dice=None if math.isnan(state.best_dice) else round(state.best_dice, 4),
        val_region_dice=tuple(round(d, 4) for d in state.best_region_dice),
        epochs=state.epoch,
        trained_minutes=round(state.elapsed / 60, 2),
    )


def _choose_postprocessing(
    config: RunConfig, state: TrainState, log: Callable[[str], None]
) -> RunConfig:
    """Keep-largest-components per region, as validation scored it at the best epoch (no
    re-prediction)."""
    choices = []
    for region, scored in zip(config.data.targets(), state.best_postprocess, strict=True):
        means = {int(n): d for n, d in scored.items()}
        choices.append(choose_keep_largest(means))
        scores = ", ".join(
            f"{'all' if n == 0 else f'largest {n}'}: {d:.4f}" for n, d in means.items()
        )
        log(
            f"post-processing {region.name} on validation ({scores}) -> keep {choices[-1] or 'all'}"
        )
    return config.override({"infer.keep_largest": tuple(choices)})


def time_summary(config: RunConfig, state: TrainState) -> str:
    """Where the time went, and the throughput training actually saw."""
    h = state.history
    if not h:
        return "no epoch completed"
    steps, data, val = (
        sum(getattr(r, k) for r in h) for k in ("step_seconds", "data_seconds", "val_seconds")
    )
    total = state.elapsed
    text = f"{total / 60:.1f} min"
    budget = config.train.max_minutes
    if budget:
        text += f" of {budget:g} ({100 * total / (budget * 60):.0f} % of the budget)"
    if math.isfinite(steps) and total > 0:
        text += (
            f": steps {100 * steps / total:.0f} %, data {100 * data / total:.0f} %, "
            f"validation {100 * val / total:.0f} %"
        )
    patch = config.train.patch_size or config.preprocess.shape
    n_steps = sum(r.steps for r in h)
    if math.isfinite(steps) and steps > 0 and patch:
        seen = n_steps * config.train.batch_size * float(np.prod(patch)) / steps
        text += f"; throughput seen {seen / 1e6:.2f} Mvoxel/s"
    return text
