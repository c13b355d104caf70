"""`voxseg demo`: the whole job on synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.cli.options import flag
from voxseg.console import ProgressUI, console, handle_errors


@command()
@handle_errors
def demo(
    out: Annotated[
        Path, typer.Option("--out", help="Folder for everything the demo makes.")
    ] = Path("demo_out"),
    cases: Annotated[int, typer.Option("--cases", min=4, help="Synthetic cases to make.")] = 16,
    minutes: Annotated[float, typer.Option("--minutes", min=0.1, help="Training budget.")] = 2.0,
    overwrite: Annotated[
        bool, flag("--overwrite", "Replace what an earlier demo left in --out.")
    ] = False,
) -> None:
    """The whole job on synthetic data: synthesise -> train -> predict -> evaluate -> report."""
    from voxseg.demo import run_demo
    from voxseg.train.loop import TrainHooks

    with ProgressUI() as ui:
        hooks = TrainHooks(on_progress=ui.on_progress, log=ui.log)
        report_path = run_demo(out, cases=cases, minutes=minutes, hooks=hooks, overwrite=overwrite)
    console.print(f"open the report: {report_path.resolve()}")
