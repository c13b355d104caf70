"""What `voxseg info` reports about a dataset.

Shape and spacing are given in the canonical order (superior, posterior, left: z, y, x), the
order `voxseg train --shape/--spacing` take, whatever the file's array order; the file's own
orientation code is reported beside them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from voxseg.data.checks import check_pair, label_values
from voxseg.data.discovery import Case, Dataset
from voxseg.data.io import read_image, read_info
from voxseg.progress import ProgressFn, Step, ignore
from voxseg.regions import Region

AXES = "z y x"
"""Order of `shape` and `spacing`: the canonical S, P, L axes, as --shape/--spacing take them."""


@dataclass(frozen=True)
class CaseInfo:
    case_id: str
    shape: tuple[int, int, int]
    """Canonical order (AXES)."""
    spacing: tuple[float, float, float]
    """Millimetres, canonical order (AXES)."""
    orientation: str
    """The file's own orientation code (e.g. IPL for KiTS19)."""
    dtype: str
    label_dtype: str | None
    label_values: tuple[int, ...] | None
    foreground_fraction: float | None


def inspect_case(case: Case, foreground: tuple[int, ...] | None = None) -> CaseInfo:
    info = read_info(case.image)
    values = fraction = label_dtype = None
    if case.label is not None:
        label, lgeom = read_image(case.label)
        check_pair(info.geometry, lgeom, case.image, case.label)
        values = label_values(label, case.label, foreground)
        fraction = float(np.count_nonzero(Region("", foreground).mask(label))) / label.size
        label_dtype = str(label.dtype)
    g = info.geometry
    shape, spacing = g.canonical_grid()
    return CaseInfo(
        case_id=case.case_id,
        shape=shape,
        spacing=tuple(round(s, 4) for s in spacing),
        orientation=g.orientation,
        dtype=info.dtype,
        label_dtype=label_dtype,
        label_values=values,
        foreground_fraction=fraction,
    )


def inspect_dataset(
    dataset: Dataset,
    foreground: tuple[int, ...] | None = None,
    on_progress: ProgressFn = ignore,
) -> list[CaseInfo]:
    rows = []
    for case in dataset.cases:
        rows.append(inspect_case(case, foreground))
        on_progress(Step("reading headers", len(rows), len(dataset.cases), case.case_id))
    return rows


def as_json(dataset: Dataset, rows: list[CaseInfo]) -> dict:
    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "cases": len(dataset.cases),
        "labelled": len(dataset.labelled),
        "unlabelled": len(dataset.unlabelled),
        "notes": list(dataset.notes),
        "label_names": {str(k): v for k, v in dataset.label_names.items()},
        "axes": f"shape and spacing in the order {AXES} (superior, posterior, left), "
        "as train --shape/--spacing take them",
        "rows": [asdict(r) for r in rows],
    }
