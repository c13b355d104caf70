"""`voxseg train`: options in, a run folder out. Each option sets one configuration field
(`config.TRAIN_OPTIONS`), whose range and choices are checked there, not here."""

from __future__ import annotations

import math
import os

import typer

from voxseg.cli import train_options as opt
from voxseg.cli.app import command
from voxseg.cli.options import Device, Foreground, Regions
from voxseg.console import (
    ProgressUI,
    console,
    err_console,
    graceful_interrupt,
    handle_errors,
    launch_torchrun,
)


@command()
@handle_errors
def train(
    data: opt.Data,
    out: opt.Out,
    model: opt.Model = None,
    preset: opt.Preset = None,
    shape: opt.Shape = None,
    spacing: opt.Spacing = None,
    epochs: opt.Epochs = None,
    batch_size: opt.BatchSize = None,
    lr: opt.Lr = None,
    weight_decay: opt.WeightDecay = None,
    loss: opt.Loss = None,
    optimizer: opt.Optimizer = None,
    val_fraction: opt.ValFraction = None,
    val_cases: opt.ValCases = None,
    patience: opt.Patience = None,
    max_minutes: opt.MaxMinutes = None,
    steps_per_epoch: opt.StepsPerEpoch = None,
    seed: opt.Seed = None,
    resume: opt.Resume = False,
    overwrite: opt.Overwrite = False,
    device: Device = "auto",
    precision: opt.Precision = None,
    augment: opt.Augment = None,
    foreground: Foreground = None,
    region_spec: Regions = None,
    cache: opt.Cache = None,
    width: opt.Width = None,
    batch_dice: opt.BatchDice = None,
    deep_supervision: opt.DeepSupervision = False,
    anisotropic: opt.Anisotropic = True,
    budget_grid: opt.BudgetGrid = True,
    nproc: opt.Nproc = 1,
) -> None:
    """Train a model; with no options the recipe plans itself from the data and --max-minutes."""
    from voxseg.config import train_overrides
    from voxseg.errors import ConfigError
    from voxseg.regions import parse_foreground, parse_regions
    from voxseg.train.loop import TrainHooks
    from voxseg.train.run import TrainOptions, run_training

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(launch_torchrun(nproc))
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    ids = tuple(v.strip() for v in val_cases.split(",") if v.strip()) if val_cases else None
    given = {
        "model": model,
        "foreground": parse_foreground(foreground),
        **{"shape": shape, "spacing": spacing, "epochs": epochs, "batch_size": batch_size},
        **{"lr": lr, "weight_decay": weight_decay, "loss": loss, "batch_dice": batch_dice},
        **{"optimizer": optimizer, "val_fraction": val_fraction, "val_cases": ids},
        **{"patience": patience, "max_minutes": max_minutes, "steps_per_epoch": steps_per_epoch},
        **{"seed": seed, "precision": precision, "augment": augment},
    }
    regions = parse_regions(region_spec) if region_spec is not None else None
    options = TrainOptions(
        data=data,
        out=out,
        overrides=train_overrides(given, regions),
        preset=preset,
        anisotropic=anisotropic,
        budget_grid=budget_grid,
        width=width,
        deep_supervision=deep_supervision,
        resume=resume,
        overwrite=overwrite,
        device=device,
        cache_dir=cache,
    )
    ui = ProgressUI(enabled=os.environ.get("RANK", "0") == "0")
    with ui, graceful_interrupt(ui.log) as interrupt:
        hooks = TrainHooks(on_progress=ui.on_progress, log=ui.log, interrupt=interrupt)
        config, state = run_training(options, hooks)
    _print_outcome(options, config, state, ui.enabled)


def _print_outcome(options, config, state, enabled: bool) -> None:
    from voxseg.run_folder import RunFolder
    from voxseg.train.loop import INTERRUPTED
    from voxseg.train.run import time_summary

    if state.stopped == INTERRUPTED:
        err_console.print(
            f"interrupted; continue with: voxseg train --data {options.data} "
            f"--out {options.out} --resume"
        )
        raise typer.Exit(130)
    if not enabled:
        return
    if math.isnan(state.best_dice):  # no validation case: the lowest training loss won
        best = f"no validation: kept epoch {state.best_epoch} (lowest training loss)"
    else:
        best = f"best validation Dice {state.best_dice:.4f} at epoch {state.best_epoch}"
    console.print(
        f"stopped: {state.stopped or 'done'}; {best} of {state.epoch}; "
        f"trained {time_summary(config, state)}; model in {RunFolder(options.out).best_weights}",
        highlight=False,
    )
