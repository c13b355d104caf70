"""`voxseg info`: what discovery finds in a dataset, or a run folder's model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.cli.options import Foreground, flag
from voxseg.console import ProgressUI, console, err_console, handle_errors


@command()
@handle_errors
def info(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA", help="Dataset root, folder of images, one image, or a run folder."
        ),
    ],
    foreground: Foreground = None,
    as_json: Annotated[bool, flag("--json", "Print JSON instead of a table.")] = False,
) -> None:
    """What discovery finds (layout, cases, shapes, spacings, labels), or a run's model card."""
    import json

    from voxseg.data import discover
    from voxseg.data.inspect import as_json as info_json
    from voxseg.data.inspect import inspect_dataset
    from voxseg.regions import parse_foreground
    from voxseg.run_folder import RunFolder

    run = RunFolder(data)
    if run.config_path.is_file():
        _print_model_card(run, as_json)
        return
    fg = parse_foreground(foreground)
    dataset = discover(data)
    with ProgressUI(transient=True, enabled=not as_json) as ui:
        rows = inspect_dataset(dataset, fg, on_progress=ui.on_progress)
    if as_json:
        print(json.dumps(info_json(dataset, rows), indent=2))
        return
    _print_dataset(dataset, rows)


def _print_dataset(dataset, rows) -> None:
    from rich.table import Table

    from voxseg.data.inspect import AXES

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
    from voxseg.train.prepared import cache_usage

    usage = cache_usage()
    console.print(
        f"training caches preprocessed cases in {usage.folder} ({usage.entries} cases, "
        f"{usage.bytes / 1e6:.1f} MB; VOXSEG_CACHE or --cache moves it, `voxseg cache --clear` "
        "empties it)",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for note in dataset.notes:
        err_console.print(f"note: {note}", highlight=False, markup=False)


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
        f"input: CT resampled to {grid}, HU window {p.hu_window}",
        f"post-processing: keep largest components {config.infer.keep_largest} (per output)"
        if any(config.infer.keep_largest)
        else "post-processing: none",
        *(f"{k.replace('_', ' ')}: {v}" for k, v in card.items() if v not in ("", None)),
    ]
    console.print(f"{run.root}\n  " + "\n  ".join(lines), highlight=False)
