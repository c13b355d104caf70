"""`voxseg export`: the trained network as ONNX, for torch-free deployment."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.cli.options import Overwrite, RunDir
from voxseg.console import console, handle_errors


@command()
@handle_errors
def export(
    run_dir: RunDir,
    format: Annotated[str, typer.Option("--format", metavar="onnx", help="Only onnx.")] = "onnx",
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for model.onnx (default: the run).")
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Export the trained network for deployment (ONNX: `voxseg predict --engine onnx`)."""
    from voxseg.errors import ConfigError
    from voxseg.export import export_onnx

    if format != "onnx":
        raise ConfigError(f"--format {format!r}: only onnx is supported")
    path = export_onnx(run_dir, out or run_dir, overwrite=overwrite)
    console.print(f"wrote {path} (checked against torch on a random input)")
