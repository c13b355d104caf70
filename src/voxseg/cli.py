"""Command-line interface. Thin Typer commands; heavy imports happen inside each command so
that `voxseg --help` stays instant."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated

import typer

from voxseg.console import (
    OneLineErrors,
    ProgressUI,
    console,
    err_console,
    graceful_interrupt,
    handle_errors,
    launch_torchrun,
)
from voxseg.console import debug as debug_flag

app = typer.Typer(
    name="voxseg",
    help="Train and run 3D CNNs for binary segmentation of volumetric medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=OneLineErrors,
)


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option("--debug", help="Show full tracebacks and the image libraries' warnings."),
    ] = False,
) -> None:
    debug_flag["on"] = debug
    from voxseg.data.io import show_library_warnings

    show_library_warnings(debug)


def _parse_foreground(value: str | None) -> tuple[int, ...] | None:
    from voxseg.errors import ConfigError
    from voxseg.regions import parse_label_values

    if value is None or value.strip().lower() in ("", "all", "nonzero"):
        return None
    values = parse_label_values(value)
    if not values:
        raise ConfigError(
            f"--foreground {value!r}: give positive label values like '2' or '1,2' "
            "(0 is background)"
        )
    return values


ForegroundOpt = Annotated[
    str | None,
    typer.Option(
        "--foreground",
        help="Label values that form the target, e.g. '2' (tumour) or '1,2'. "
        "Default: every non-zero label.",
    ),
]


def _parse_regions(value: str | None):
    from voxseg.regions import parse_regions

    return None if value is None else parse_regions(value)


RegionsOpt = Annotated[
    str | None,
    typer.Option(
        "--regions",
        help="Label regions, outermost first, one network output each: 'kits' "
        "(kidney+tumour=1,2;tumour=2), '1,2;2' or 'name=1,2;name=2'.",
    ),
]


@app.command()
@handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to create (KiTS19 layout).")],
    cases: Annotated[int, typer.Option("--cases", min=1, help="Number of cases.")] = 8,
    shape: Annotated[tuple[int, int, int], typer.Option("--shape", help="Array shape Z Y X.")] = (
        64,
        64,
        64,
    ),
    spacing: Annotated[
        tuple[float, float, float], typer.Option("--spacing", help="Voxel size in mm, Z Y X.")
    ] = (2.5, 1.6, 1.6),
    seed: Annotated[int, typer.Option("--seed", help="Random seed (case i uses seed + i).")] = 0,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="KiTS-layout folder of real label maps to paint CT around."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing output.")
    ] = False,
) -> None:
    """Write a KiTS19-layout dataset of synthetic CT-like volumes (Hounsfield units)."""
    from voxseg.synth import write_dataset

    with ProgressUI(transient=True) as ui:
        written = write_dataset(
            out,
            cases,
            shape=shape,
            spacing=spacing,
            seed=seed,
            labels_dir=labels,
            overwrite=overwrite,
            on_progress=ui.on_progress,
        )
    console.print(f"wrote {len(written)} cases to {out}")


@app.command()
@handle_errors
def info(
    data: Annotated[
        Path, typer.Argument(help="Dataset root, folder of images, one image, or a run folder.")
    ],
    foreground: ForegroundOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What discovery finds (layout, cases, shapes, spacings, labels), or a run's model card."""
    import json

    from rich.table import Table

    from voxseg.data import discover
    from voxseg.data.inspect import AXES, inspect_dataset
    from voxseg.data.inspect import as_json as info_json
    from voxseg.run_folder import RunFolder

    run = RunFolder(data)
    if run.config_path.is_file():
        _print_model_card(run, as_json)
        return
    fg = _parse_foreground(foreground)
    dataset = discover(data)
    with ProgressUI(transient=True, enabled=not as_json) as ui:
        rows = inspect_dataset(dataset, fg, on_progress=ui.on_progress)
    if as_json:
        print(json.dumps(info_json(dataset, rows), indent=2))
        return
    fractions = [r.foreground_fraction for r in rows if r.foreground_fraction is not None]
    summary = (
        f"{len(dataset.cases)} cases ({len(dataset.labelled)} labelled, "
        f"{len(dataset.unlabelled)} unlabelled), layout {dataset.layout}, root {dataset.root}"
    )
    if fractions:
        summary += f"; foreground {100 * min(fractions):.2f}-{100 * max(fractions):.2f} % of voxels"
    table = Table(title=summary, title_justify="left")
    axes = AXES.replace(" ", ",")
    columns = (f"shape {axes}", f"spacing {axes} mm", "file orient", "dtype", "labels", "fg %")
    for col in ("case", *columns):
        table.add_column(col, justify="right" if col == "fg %" else "left")
    for r in rows:
        table.add_row(
            r.case_id,
            "x".join(map(str, r.shape)),
            " ".join(f"{s:g}" for s in r.spacing),
            r.orientation,
            r.dtype + (f"/{r.label_dtype}" if r.label_dtype else ""),
            ",".join(map(str, r.label_values)) if r.label_values is not None else "-",
            f"{100 * r.foreground_fraction:.2f}" if r.foreground_fraction is not None else "-",
        )
    console.print(table)
    if dataset.label_names:
        named = ", ".join(f"{v} {n}" for v, n in dataset.label_names.items())
        console.print(f"labels (dataset.json): {named}", highlight=False)
    console.print(
        f"shape and spacing in the order {AXES} (superior, posterior, left), as "
        "`voxseg train --shape/--spacing` take them",
        highlight=False,
    )
    for note in dataset.notes:
        err_console.print(f"note: {note}", highlight=False)


def _print_model_card(run, as_json: bool) -> None:
    import json
    from dataclasses import asdict

    config = run.load_config()
    card = asdict(config.card)
    if as_json:
        print(json.dumps({"model_card": card, "config": config.to_dict()}, indent=2))
        return
    p = config.preprocess
    grid = f"shape {p.shape}" if p.mode == "shape" else f"spacing {p.spacing} mm (z y x)"
    lines = [
        f"model {config.model.name} {config.model.options or ''}".rstrip(),
        f"input: CT resampled to {grid}, HU window {p.window}",
        f"post-processing: keep largest components {config.infer.keep_largest} (per output)"
        if any(config.infer.keep_largest)
        else "post-processing: none",
        *(f"{k.replace('_', ' ')}: {v}" for k, v in card.items() if v not in ("", None)),
    ]
    console.print(f"{run.root}\n  " + "\n  ".join(lines), highlight=False)


@app.command()
@handle_errors
def summary(
    model: Annotated[str, typer.Option("--model", help="Registered model name.")] = "unet",
    shape: Annotated[tuple[int, int, int], typer.Option("--shape", help="Input size D H W.")] = (
        128,
        128,
        128,
    ),
) -> None:
    """Every layer with its output shape and parameter count (like Keras's model.summary())."""
    from voxseg.models import build_model
    from voxseg.models.summary import format_summary, model_summary

    net = build_model(model)
    console.print(format_summary(model_summary(net, shape)), highlight=False, soft_wrap=True)


def main() -> None:
    app()


@app.command()
@handle_errors
def train(
    data: Annotated[
        Path, typer.Option("--data", help="Labelled dataset root (KiTS or MSD layout).")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Run folder for weights, config, metrics, curves.")
    ],
    model: Annotated[
        str | None, typer.Option("--model", help="Model name (default: unet).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", help="'seed': the original Keras recipe.")
    ] = None,
    shape: Annotated[
        tuple[int, int, int] | None, typer.Option("--shape", help="Resize every case to D H W.")
    ] = None,
    spacing: Annotated[
        tuple[float, float, float] | None, typer.Option("--spacing", help="Resample to Z Y X mm.")
    ] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1)] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1)] = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0)] = None,
    weight_decay: Annotated[
        float | None, typer.Option("--weight-decay", min=0.0, help="Default 0.01 (adamw).")
    ] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="bce or dice_bce.")] = None,
    optimizer: Annotated[
        str | None, typer.Option("--optimizer", help="adamw, adam or sgd.")
    ] = None,
    val_fraction: Annotated[float | None, typer.Option("--val-fraction", min=0.0, max=0.9)] = None,
    val_cases: Annotated[
        str | None, typer.Option("--val-cases", help="Comma-separated case ids.")
    ] = None,
    patience: Annotated[
        int | None, typer.Option("--patience", min=0, help="0 disables early stopping.")
    ] = None,
    max_minutes: Annotated[
        float | None, typer.Option("--max-minutes", min=0.0, help="Time budget.")
    ] = None,
    steps_per_epoch: Annotated[int | None, typer.Option("--steps-per-epoch", min=1)] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Default 0.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Start afresh in an existing --out.")
    ] = False,
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")
    ] = "auto",
    precision: Annotated[
        str | None, typer.Option("--precision", help="auto, fp32, bf16, fp16.")
    ] = None,
    augment: Annotated[
        str | None,
        typer.Option("--augment", help="off, light (flips, jitter) or full (nnU-Net's kind)."),
    ] = None,
    foreground: ForegroundOpt = None,
    region_spec: RegionsOpt = None,
    cache: Annotated[
        Path | None, typer.Option("--cache", help="Preprocessed-case cache folder.")
    ] = None,
    width: Annotated[
        int | None,
        typer.Option("--width", min=1, help="U-Net base width of the plan (default: 8 on CPU)."),
    ] = None,
    batch_dice: Annotated[
        bool | None,
        typer.Option(
            "--batch-dice/--sample-dice",
            help="Dice loss over the whole batch, or per patch (a small tumour counts fully).",
            show_default=False,
        ),
    ] = None,
    deep_supervision: Annotated[
        bool,
        typer.Option(
            "--deep-supervision",
            help="Also train the U-Net's coarser decoder outputs (nnU-Net's deep supervision).",
        ),
    ] = False,
    anisotropic: Annotated[
        bool,
        typer.Option(
            "--anisotropic/--isotropic",
            help="Thick slices: plan nnU-Net's U-Net that does not mix slices at first.",
        ),
    ] = True,
    budget_grid: Annotated[
        bool,
        typer.Option(
            "--budget-grid/--data-grid",
            help="With --max-minutes, coarsen the planned grid so a short budget sees the "
            "training set often enough (predictions still land on each input's own grid).",
        ),
    ] = True,
    nproc: Annotated[
        int, typer.Option("--nproc", min=1, help="Processes on this machine (DDP via torchrun).")
    ] = 1,
) -> None:
    """Train a model; with no options the recipe plans itself from the data and --max-minutes."""
    from voxseg.errors import ConfigError
    from voxseg.run_folder import RunFolder
    from voxseg.train.loop import INTERRUPTED, TrainHooks
    from voxseg.train.run import TrainOptions, run_training, time_summary

    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(launch_torchrun(nproc))

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; choose one")
    ids = tuple(v.strip() for v in val_cases.split(",") if v.strip()) if val_cases else None
    regions = _parse_regions(region_spec)
    given = {  # option -> the config field it sets; only options the user gave count
        "model.name": model,
        "data.foreground": _parse_foreground(foreground),
        "data.regions": regions and tuple(r.labels for r in regions),
        "data.region_names": regions and tuple(r.name for r in regions),
        "preprocess.shape": shape,
        "preprocess.spacing": spacing,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.weight_decay": weight_decay,
        "train.loss": loss,
        "train.batch_dice": batch_dice,
        "train.optimizer": optimizer,
        "train.val_fraction": val_fraction,
        "train.val_cases": ids,
        "train.patience": patience,
        "train.max_minutes": max_minutes,
        "train.steps_per_epoch": steps_per_epoch,
        "train.seed": seed,
        "train.precision": precision,
        "train.augment": augment,
    }
    options = TrainOptions(
        data=data,
        out=out,
        overrides={k: v for k, v in given.items() if v is not None},
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
    if state.stopped == INTERRUPTED:
        err_console.print(
            f"interrupted; continue with: voxseg train --data {data} --out {out} --resume"
        )
        raise typer.Exit(130)
    if not ui.enabled:
        return
    if math.isnan(state.best_dice):  # no validation case: the lowest training loss won
        best = f"no validation: kept epoch {state.best_epoch} (lowest training loss)"
    else:
        best = f"best validation Dice {state.best_dice:.4f} at epoch {state.best_epoch}"
    console.print(
        f"stopped: {state.stopped or 'done'}; {best} of {state.epoch}; "
        f"trained {time_summary(config, state)}; model in {RunFolder(out).best_weights}",
        highlight=False,
    )


@app.command()
@handle_errors
def predict(
    model: Annotated[Path, typer.Option("--model", help="Run folder made by `voxseg train`.")],
    input: Annotated[
        Path,
        typer.Option("--input", "-i", help="Image file, folder of images, or dataset root."),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Mask file (single input) or folder.")
    ],
    device: Annotated[
        str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")
    ] = "auto",
    tta: Annotated[bool, typer.Option("--tta", help="Mirror test-time augmentation.")] = False,
    overlap: Annotated[float | None, typer.Option("--overlap", min=0.0, max=0.95)] = None,
    probabilities: Annotated[
        bool, typer.Option("--probabilities", help="Also write <case>_prob.nii.gz.")
    ] = False,
    keep_largest: Annotated[
        int | None,
        typer.Option(
            "--keep-largest",
            min=0,
            help="Keep N largest components (0: all). Default: what training chose on validation.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace existing outputs.")
    ] = False,
    engine: Annotated[
        str,
        typer.Option(
            "--engine",
            help="auto, torch or onnx (ONNX Runtime on the CPU, no torch; needs "
            "`voxseg export` first). auto: the faster one as measured (torch with bf16; "
            "else ONNX Runtime when exported).",
        ),
    ] = "auto",
    output_format: Annotated[
        str,
        typer.Option(
            "--output-format",
            help="nifti, or dicom-seg: a DICOM Segmentation per input series, referencing it.",
        ),
    ] = "nifti",
) -> None:
    """Predict masks on each input's exact grid (shape, spacing, origin, direction, axis order)."""
    from voxseg.errors import ConfigError
    from voxseg.prediction import infer_settings, iter_predictions, load_predictor, shard_from_env

    if engine not in ("auto", "torch", "onnx"):
        raise ConfigError(f"--engine {engine!r}: choose auto, torch or onnx")
    if output_format not in ("nifti", "dicom-seg"):
        raise ConfigError(f"--output-format {output_format!r}: choose nifti or dicom-seg")
    predictor = load_predictor(model, device, engine=engine)
    infer = infer_settings(predictor.config, tta=tta, overlap=overlap, keep_largest=keep_largest)
    with ProgressUI(transient=True) as ui:
        results = list(
            iter_predictions(
                predictor,
                input,
                output,
                infer=infer,
                probabilities=probabilities,
                overwrite=overwrite,
                shard=shard_from_env(),
                on_progress=ui.on_progress,
                output_format=output_format,
            )
        )
    kept = sum(r.skipped for r in results)
    if kept:
        err_console.print(f"{kept} outputs already existed and were kept (--overwrite redoes them)")
    console.print(f"wrote {len(results) - kept} masks to {output}")


@app.command()
@handle_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run folder made by `voxseg train`.")],
    format: Annotated[str, typer.Option("--format", help="Only onnx for now.")] = "onnx",
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for model.onnx (default: the run).")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Export the trained network for deployment (ONNX: `voxseg predict --engine onnx`)."""
    from voxseg.errors import ConfigError
    from voxseg.export import export_onnx

    if format != "onnx":
        raise ConfigError(f"--format {format!r}: only onnx is supported")
    path = export_onnx(run_dir, out or run_dir, overwrite=overwrite)
    console.print(f"wrote {path} (checked against torch on a random input)")


@app.command()
@handle_errors
def evaluate(
    pred: Annotated[
        Path, typer.Option("--pred", help="Folder of <case_id>.nii.gz masks (or one file).")
    ],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of masks or a labelled dataset root.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="metrics.json (a .csv is written beside it).")
    ] = None,
    foreground: ForegroundOpt = None,
    region_spec: RegionsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """Dice, IoU, precision, recall, HD95, surface Dice (1/2 mm), volume difference per case;
    with --regions, every metric per region and the composite (KiTS19: mean of the two Dice)."""
    from voxseg.errors import ConfigError
    from voxseg.evaluation import check_results, evaluate_regions, write_results
    from voxseg.evaluation import evaluate as run_evaluation

    regions = _parse_regions(region_spec)
    if regions and foreground is not None:
        raise ConfigError("give --foreground or --regions, not both")
    if out is not None:
        check_results(out, overwrite)
    if regions:
        result = evaluate_regions(pred, gt, regions)
        for region, scored in zip(regions, result.results, strict=True):
            _print_metrics(scored, f"{region.name}: ")
        console.print(
            f"composite Dice (mean of the regions' mean Dice): {result.composite_dice:.4f}"
        )
    else:
        result = run_evaluation(pred, gt, foreground=_parse_foreground(foreground))
        _print_metrics(result)
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False)
    if out is not None:
        json_path, csv_path = write_results(result, out, overwrite)
        console.print(f"wrote {json_path} and {csv_path}")


def _print_metrics(result, prefix: str = "") -> None:
    from rich.table import Table

    rows = result.table()
    table = Table(
        title=f"{prefix}{len(result.cases)} cases; global Dice {result.global_dice:.4f}",
        title_justify="left",
    )
    for col in rows[0]:
        table.add_column(col)
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)


@app.command()
@handle_errors
def report(
    run_dir: Annotated[
        Path | None, typer.Argument(help="Run folder made by `voxseg train`.")
    ] = None,
    pred: Annotated[Path | None, typer.Option("--pred", help="Folder of predicted masks.")] = None,
    gt: Annotated[
        Path | None, typer.Option("--gt", help="Ground truth: mask folder or dataset root.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    foreground: ForegroundOpt = None,
    region_spec: RegionsOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite")] = False,
) -> None:
    """One self-contained HTML page: curves, metrics table, overlays (worst cases first)."""
    from voxseg.errors import ConfigError
    from voxseg.report import write_report

    if run_dir is None and (pred is None or gt is None):
        raise ConfigError("give a run folder, or both --pred and --gt")
    if (pred is None) != (gt is None):
        raise ConfigError("--pred and --gt go together")
    path = write_report(
        run_dir,
        out,
        pred_dir=pred,
        gt=gt,
        foreground=_parse_foreground(foreground),
        regions=_parse_regions(region_spec),
        overwrite=overwrite,
    )
    console.print(f"report: {path.resolve()}")


@app.command()
@handle_errors
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for everything the demo makes.")
    ] = Path("demo_out"),
    cases: Annotated[int, typer.Option("--cases", min=4)] = 16,
    minutes: Annotated[float, typer.Option("--minutes", min=0.1, help="Training budget.")] = 2.0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace what an earlier demo left in --out.")
    ] = False,
) -> None:
    """The whole job on synthetic data: synthesise -> train -> predict -> evaluate -> report."""
    from voxseg.demo import run_demo
    from voxseg.train.loop import TrainHooks

    with ProgressUI() as ui:
        hooks = TrainHooks(on_progress=ui.on_progress, log=ui.log)
        report_path = run_demo(out, cases=cases, minutes=minutes, hooks=hooks, overwrite=overwrite)
    console.print(f"open the report: {report_path.resolve()}")
