"""`voxseg train`: options in, a run folder out. Each option sets one configuration field
(`config.TRAIN_OPTIONS`), whose range and choices are checked there, not here."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.cli.options import Device, Foreground, Regions, flag
from voxseg.config import TrainConfig
from voxseg.console import (
    ProgressUI,
    console,
    err_console,
    graceful_interrupt,
    handle_errors,
    launch_torchrun,
)

_T = TrainConfig()


def _opt(name: str, help: str, metavar: str | None = None):
    return typer.Option(name, help=help, metavar=metavar)


@command()
@handle_errors
def train(
    data: Annotated[Path, _opt("--data", "Labelled dataset root (KiTS, MSD or nnU-Net layout).")],
    out: Annotated[Path, _opt("--out", "Run folder for weights, config, metrics, curves.")],
    model: Annotated[str | None, _opt("--model", "Network (default: unet).", "unet|seed")] = None,
    preset: Annotated[
        str | None, _opt("--preset", "'seed': the original Keras recipe.", "seed")
    ] = None,
    shape: Annotated[
        tuple[int, int, int] | None, _opt("--shape", "Resize every case to this size.", "Z Y X")
    ] = None,
    spacing: Annotated[
        tuple[float, float, float] | None,
        _opt("--spacing", "Resample to this voxel size in mm (default: planned).", "Z Y X"),
    ] = None,
    epochs: Annotated[
        int | None, _opt("--epochs", "Most epochs (default: planned; the clock ends a timed run).")
    ] = None,
    batch_size: Annotated[
        int | None, _opt("--batch-size", "Patches per step (default: planned, 2).")
    ] = None,
    lr: Annotated[float | None, _opt("--lr", f"Peak learning rate (default {_T.lr:g}).")] = None,
    weight_decay: Annotated[
        float | None, _opt("--weight-decay", f"Default {_T.weight_decay:g} (adamw).")
    ] = None,
    loss: Annotated[str | None, _opt("--loss", f"Default {_T.loss}.", "bce|dice_bce")] = None,
    optimizer: Annotated[
        str | None, _opt("--optimizer", f"Default {_T.optimizer}.", "adamw|adam|sgd")
    ] = None,
    val_fraction: Annotated[
        float | None,
        _opt("--val-fraction", f"Share of cases held out (default {_T.val_fraction:g})."),
    ] = None,
    val_cases: Annotated[
        str | None, _opt("--val-cases", "Validation case ids, comma-separated.", "IDS")
    ] = None,
    patience: Annotated[
        int | None, _opt("--patience", "Epochs without improvement before stopping; 0: never.")
    ] = None,
    max_minutes: Annotated[
        float | None, _opt("--max-minutes", "Time budget; the recipe plans for it.")
    ] = None,
    steps_per_epoch: Annotated[
        int | None,
        _opt("--steps-per-epoch", "Steps per epoch (default: one pass; timed runs adapt it)."),
    ] = None,
    seed: Annotated[int | None, _opt("--seed", f"Random seed (default {_T.seed}).")] = None,
    resume: Annotated[bool, flag("--resume", "Continue the run in --out.")] = False,
    overwrite: Annotated[bool, flag("--overwrite", "Start afresh in an existing --out.")] = False,
    device: Device = "auto",
    precision: Annotated[
        str | None,
        _opt("--precision", "Default auto: bf16 where it runs fast.", "auto|fp32|bf16|fp16"),
    ] = None,
    augment: Annotated[
        str | None,
        _opt(
            "--augment",
            f"light: flips, jitter; full: nnU-Net's kind (default {_T.augment}).",
            "off|light|full",
        ),
    ] = None,
    foreground: Foreground = None,
    region_spec: Regions = None,
    cache: Annotated[Path | None, _opt("--cache", "Preprocessed-case cache folder.")] = None,
    width: Annotated[int | None, _opt("--width", "U-Net base width (default: 8 on CPU).")] = None,
    batch_dice: Annotated[
        bool | None,
        typer.Option(
            "--batch-dice/--sample-dice",
            metavar="",
            help="Dice loss over the whole batch, or per patch (a small tumour counts fully). "
            "Default: per patch with --regions.",
            show_default=False,
        ),
    ] = None,
    deep_supervision: Annotated[
        bool,
        flag("--deep-supervision", "Also train the coarser decoder outputs (nnU-Net's)."),
    ] = False,
    anisotropic: Annotated[
        bool,
        typer.Option(
            "--anisotropic/--isotropic",
            metavar="",
            help="Thick slices: plan nnU-Net's U-Net that does not mix slices at first.",
        ),
    ] = True,
    budget_grid: Annotated[
        bool,
        typer.Option(
            "--budget-grid/--data-grid",
            metavar="",
            help="With --max-minutes, coarsen the planned grid so a short budget sees the "
            "training set often enough (predictions still land on each input's own grid).",
        ),
    ] = True,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Processes on this machine (DDP via torchrun).")
    ] = 1,
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
