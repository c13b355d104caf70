"""`voxseg evaluate`: predicted masks against ground truth, per case and overall."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from voxseg.cli.app import command
from voxseg.cli.options import Foreground, Overwrite, Regions
from voxseg.console import console, err_console, handle_errors


@command()
@handle_errors
def evaluate(
    pred: Annotated[
        Path, typer.Option("--pred", help="Folder of <case_id>.nii.gz masks (or one file).")
    ],
    gt: Annotated[Path, typer.Option("--gt", help="Folder of masks or a labelled dataset root.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="metrics.json (a .csv is written beside it).")
    ] = None,
    foreground: Foreground = None,
    region_spec: Regions = None,
    overwrite: Overwrite = False,
) -> None:
    """Dice, IoU, precision, recall, HD95, surface Dice (1/2 mm), volume difference per case;
    with --regions, every metric per region and the composite (KiTS19: mean of the two Dice)."""
    from voxseg.errors import ConfigError
    from voxseg.evaluation import check_results, score_as_asked, write_results
    from voxseg.regions import parse_foreground, parse_regions

    if region_spec is not None and foreground is not None:
        raise ConfigError("give --foreground or --regions, not both")
    if out is not None:
        check_results(out, overwrite)
    regions = parse_regions(region_spec) if region_spec is not None else None
    scored, _ = score_as_asked(pred, gt, foreground=parse_foreground(foreground), regions=regions)
    several = len(scored.regions) > 1
    for region, per_region in zip(scored.regions, scored.results, strict=True):
        print_metrics(per_region, f"{region.name}: " if several else "")
    if several:
        console.print(
            f"composite Dice (mean of the regions' mean Dice): {scored.composite_dice:.4f}"
        )
    result = scored if several else scored.results[0]  # the file format of each
    for note in result.notes:
        err_console.print(f"note: {note}", highlight=False)
    if out is not None:
        json_path, csv_path = write_results(result, out, overwrite)
        console.print(f"wrote {json_path} and {csv_path}")


def print_metrics(result, prefix: str = "") -> None:
    from rich.table import Table

    rows = result.table()
    table = Table(
        title=f"{prefix}{len(result.cases)} cases; global Dice {result.global_dice:.4f}",
        title_justify="left",
    )
    for col in rows[0]:
        table.add_column(col)
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)
