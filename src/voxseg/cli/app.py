"""The `voxseg` Typer application, its root options (--debug, --version) and the command
class every subcommand uses."""

from __future__ import annotations

from typing import Annotated

import typer
import typer.core

from voxseg.console import OneLineErrors, console
from voxseg.console import debug as debug_flag


class _PlainHelp:
    """Help that reads like the rest of the tool: `voxseg info DATA`, not `{DATA}`; `--help`
    without a `<bool>` type (Typer 0.29's defaults)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = super().collect_usage_pieces(ctx)
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in pieces]

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class Command(_PlainHelp, typer.core.TyperCommand):
    pass


class Group(_PlainHelp, OneLineErrors):
    pass


app = typer.Typer(
    name="voxseg",
    help="Train and run 3D CNNs for binary and nested-region segmentation of volumetric "
    "medical images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=Group,
)


def command():
    """`@command()` registers a function as a subcommand."""
    return app.command(cls=Command)


def _show_version(value: bool) -> None:
    if value:
        from voxseg._version import __version__

        console.print(f"voxseg {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", metavar="", help="Show full tracebacks and the image libraries' warnings."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            metavar="",
            is_eager=True,
            callback=_show_version,
            help="Print voxseg's version and exit.",
        ),
    ] = False,
) -> None:
    debug_flag["on"] = debug
    from voxseg.data.io import show_library_warnings

    show_library_warnings(debug)
