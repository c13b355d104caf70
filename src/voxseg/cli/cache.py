"""`voxseg cache`: where training keeps preprocessed cases, how much, and clearing it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.cli.options import flag
from voxseg.console import console, handle_errors


@command()
@handle_errors
def cache(
    folder: Annotated[
        Path | None,
        typer.Option("--cache", help="Cache folder (default: $VOXSEG_CACHE, else ~/.cache)."),
    ] = None,
    clear: Annotated[
        bool, flag("--clear", "Delete the cached cases (training rebuilds them).")
    ] = False,
) -> None:
    """Training caches each preprocessed case (keyed by file and settings, so a changed file
    or setting is prepared again); show the cache, or clear it."""
    from voxseg.train.prepared import cache_usage, clear_cache

    usage = clear_cache(folder) if clear else cache_usage(folder)
    verb = "deleted" if clear else "holds"
    console.print(
        f"{usage.folder}: {verb} {usage.entries} cached cases ({usage.bytes / 1e6:.1f} MB)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
