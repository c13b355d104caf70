"""`voxseg summary`: a network's layers, like Keras's model.summary()."""

from __future__ import annotations

from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.console import console, handle_errors


@command()
@handle_errors
def summary(
    model: Annotated[str, typer.Option("--model", metavar="unet|seed", help="Network.")] = "unet",
    shape: Annotated[
        tuple[int, int, int], typer.Option("--shape", metavar="D H W", help="Input size.")
    ] = (128, 128, 128),
) -> None:
    """Every layer with its output shape and parameter count (like Keras's model.summary())."""
    from voxseg.models import build_model
    from voxseg.models.summary import format_summary, model_summary

    net = build_model(model)
    console.print(format_summary(model_summary(net, shape)), highlight=False, soft_wrap=True)
