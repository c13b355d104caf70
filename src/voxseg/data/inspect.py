"""What `voxseg info` reports about a dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from voxseg.data.checks import check_pair, label_values
from voxseg.data.discovery import Case, Dataset
from voxseg.data.io import read_image, read_info
from voxseg.preprocess import binary_target


@dataclass(frozen=True)
class CaseInfo:
    case_id: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    orientation: str
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
        fraction = float(np.count_nonzero(binary_target(label, foreground))) / label.size
        label_dtype = str(label.dtype)
    g = info.geometry
    return CaseInfo(
        case_id=case.case_id,
        shape=g.shape,
        spacing=tuple(round(s, 4) for s in g.spacing),
        orientation=g.orientation,
        dtype=info.dtype,
        label_dtype=label_dtype,
        label_values=values,
        foreground_fraction=fraction,
    )


def inspect_dataset(
    dataset: Dataset,
    foreground: tuple[int, ...] | None = None,
    progress: Callable[[], None] | None = None,
) -> list[CaseInfo]:
    rows = []
    for case in dataset.cases:
        rows.append(inspect_case(case, foreground))
        if progress:
            progress()
    return rows


def as_json(dataset: Dataset, rows: list[CaseInfo]) -> dict:
    return {
        "root": str(dataset.root),
        "layout": dataset.layout,
        "cases": len(dataset.cases),
        "labelled": len(dataset.labelled),
        "unlabelled": len(dataset.unlabelled),
        "notes": list(dataset.notes),
        "rows": [asdict(r) for r in rows],
    }
