"""The options of `voxseg train`, declared apart from the command so that it reads as what it
does. Each sets one configuration field (`config.TRAIN_OPTIONS`) whose range and choices are
checked there; the help shows the defaults the config and the planner use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.options import flag
from voxseg.config import TrainConfig

_T = TrainConfig()


def _opt(name: str, help: str, metavar: str | None = None):
    return typer.Option(name, help=help, metavar=metavar)


Data = Annotated[Path, _opt("--data", "Labelled dataset root (KiTS, MSD or nnU-Net layout).")]
Out = Annotated[Path, _opt("--out", "Run folder for weights, config, metrics, curves.")]
Model = Annotated[str | None, _opt("--model", "Network (default: unet).", "unet|seed")]
Preset = Annotated[str | None, _opt("--preset", "'seed': the original Keras recipe.", "seed")]
Shape = Annotated[
    tuple[int, int, int] | None, _opt("--shape", "Resize every case to this size.", "Z Y X")
]
Spacing = Annotated[
    tuple[float, float, float] | None,
    _opt("--spacing", "Resample to this voxel size in mm (default: planned).", "Z Y X"),
]
Epochs = Annotated[
    int | None, _opt("--epochs", "Most epochs (default: planned; the clock ends a timed run).")
]
BatchSize = Annotated[int | None, _opt("--batch-size", "Patches per step (default: planned, 2).")]
Lr = Annotated[
    float | None,
    _opt("--lr", f"Peak learning rate (default: 0.003 planned for the U-Net, else {_T.lr:g})."),
]
WeightDecay = Annotated[
    float | None, _opt("--weight-decay", f"Default {_T.weight_decay:g} (adamw).")
]
Loss = Annotated[str | None, _opt("--loss", f"Default {_T.loss}.", "bce|dice_bce")]
Optimizer = Annotated[str | None, _opt("--optimizer", f"Default {_T.optimizer}.", "adamw|adam|sgd")]
ValFraction = Annotated[
    float | None,
    _opt("--val-fraction", f"Share of cases held out (default {_T.val_fraction:g})."),
]
ValCases = Annotated[
    str | None, _opt("--val-cases", "Validation case ids, comma-separated.", "IDS")
]
Patience = Annotated[
    int | None, _opt("--patience", "Epochs without improvement before stopping; 0: never.")
]
MaxMinutes = Annotated[float | None, _opt("--max-minutes", "Time budget; the recipe plans for it.")]
StepsPerEpoch = Annotated[
    int | None,
    _opt("--steps-per-epoch", "Steps per epoch (default: one pass; timed runs adapt it)."),
]
Seed = Annotated[int | None, _opt("--seed", f"Random seed (default {_T.seed}).")]
Resume = Annotated[bool, flag("--resume", "Continue the run in --out.")]
Overwrite = Annotated[bool, flag("--overwrite", "Start afresh in an existing --out.")]
Precision = Annotated[
    str | None,
    _opt("--precision", "Default auto: bf16 where it runs fast.", "auto|fp32|bf16|fp16"),
]
Augment = Annotated[
    str | None,
    _opt(
        "--augment",
        f"light: flips, jitter; full: nnU-Net's kind (default {_T.augment}).",
        "off|light|full",
    ),
]
Cache = Annotated[Path | None, _opt("--cache", "Preprocessed-case cache folder.")]
Width = Annotated[int | None, _opt("--width", "U-Net base width (default: 8 on CPU).")]
BatchDice = Annotated[
    bool | None,
    typer.Option(
        "--batch-dice/--sample-dice",
        metavar="",
        help="Dice loss over the whole batch, or per patch (a small tumour counts fully). "
        "Default: per patch with --regions.",
        show_default=False,
    ),
]
DeepSupervision = Annotated[
    bool,
    flag("--deep-supervision", "Also train the coarser decoder outputs (nnU-Net's)."),
]
Anisotropic = Annotated[
    bool,
    typer.Option(
        "--anisotropic/--isotropic",
        metavar="",
        help="Thick slices: plan nnU-Net's U-Net that does not mix slices at first.",
    ),
]
BudgetGrid = Annotated[
    bool,
    typer.Option(
        "--budget-grid/--data-grid",
        metavar="",
        help="With --max-minutes, coarsen the planned grid so a short budget sees the "
        "training set often enough (predictions still land on each input's own grid).",
    ),
]
Nproc = Annotated[
    int, typer.Option("--nproc", min=1, help="Processes on this machine (DDP via torchrun).")
]
