"""`voxseg report`: one self-contained HTML page for a run or a set of predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.cli.options import Foreground, Overwrite, Regions
from voxseg.console import console, handle_errors


@command()
@handle_errors
def report(
    run_dir: Annotated[
        Path | None,
        typer.Argument(metavar="[RUN]", help="Run folder made by `voxseg train`."),
    ] = None,
    pred: Annotated[Path | None, typer.Option("--pred", help="Folder of predicted masks.")] = None,
    gt: Annotated[
        Path | None, typer.Option("--gt", help="Ground truth: mask folder or dataset root.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("report.html"),
    foreground: Foreground = None,
    region_spec: Regions = None,
    overwrite: Overwrite = False,
) -> None:
    """One self-contained HTML page: curves, metrics table, overlays (worst cases first)."""
    from voxseg.errors import ConfigError
    from voxseg.regions import parse_foreground, parse_regions
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
        foreground=parse_foreground(foreground),
        regions=parse_regions(region_spec) if region_spec is not None else None,
        overwrite=overwrite,
    )
    console.print(f"report: {path.resolve()}")
