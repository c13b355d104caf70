"""`voxseg synth`: a KiTS19-layout dataset of synthetic CT-like volumes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.cli.options import Overwrite
from voxseg.console import ProgressUI, console, handle_errors


@command()
@handle_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to create (KiTS19 layout).")],
    cases: Annotated[int, typer.Option("--cases", min=1, help="Number of cases.")] = 8,
    shape: Annotated[
        tuple[int, int, int], typer.Option("--shape", metavar="Z Y X", help="Array shape.")
    ] = (64, 64, 64),
    spacing: Annotated[
        tuple[float, float, float],
        typer.Option("--spacing", metavar="Z Y X", help="Voxel size in mm."),
    ] = (2.5, 1.6, 1.6),
    seed: Annotated[int, typer.Option("--seed", help="Random seed (case i uses seed + i).")] = 0,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="KiTS-layout folder of real label maps to paint CT around."),
    ] = None,
    overwrite: Overwrite = False,
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
