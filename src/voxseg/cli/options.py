"""Options several commands share, and the one way a string option is checked against a
choice type of its owner (`prediction.Engine`, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from voxseg.errors import ConfigError


def flag(name: str, help: str) -> Any:
    """An on/off option, shown without a value type."""
    return typer.Option(name, metavar="", help=help)


def choices(kind: Any) -> str:
    """'auto|torch|onnx' for Literal['auto', 'torch', 'onnx']."""
    return "|".join(get_args(kind))


def choose(value: str, kind: Any, option: str) -> Any:
    """`value` if it is one of the Literal `kind`'s values, else one line naming `option`."""
    allowed = get_args(kind)
    if value not in allowed:
        raise ConfigError(f"{option} {value!r}: choose one of {', '.join(allowed)}")
    return value


Foreground = Annotated[
    str | None,
    typer.Option(
        "--foreground",
        metavar="LABELS",
        help="Label values that form the target, e.g. '2' (tumour) or '1,2'. "
        "Default: every non-zero label.",
    ),
]
Regions = Annotated[
    str | None,
    typer.Option(
        "--regions",
        metavar="SPEC",
        help="Label regions, outermost first, one network output each: 'kits' "
        "(kidney+tumour=1,2;tumour=2), '1,2;2' or 'name=1,2;name=2'.",
    ),
]
Device = Annotated[
    str,
    typer.Option("--device", metavar="auto|cpu|cuda|cuda:N|mps", help="Where to run."),
]
Overwrite = Annotated[
    bool, flag("--overwrite", "Replace outputs an earlier run left (never an input).")
]
RunDir = Annotated[Path, typer.Argument(metavar="RUN", help="Run folder made by `voxseg train`.")]
