"""Command-line interface: one small module per command, each a thin Typer wrapper over the
library. Heavy imports happen inside each command so that `voxseg --help` stays instant."""

from __future__ import annotations

from voxseg.cli.app import app

# Importing a command module registers it; this order is the order `voxseg --help` lists.
# isort: off
from voxseg.cli import synth, info, summary, train, predict, export, evaluate, report, demo, cache  # noqa: F401, E402
# isort: on


def main() -> None:
    app()


__all__ = ["app", "main"]
