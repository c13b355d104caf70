"""Synthetic datasets on disk, in the KiTS19 layout."""

from __future__ import annotations

from pathlib import Path

from voxseg.errors import ConfigError, InputError, OutputExistsError
from voxseg.progress import ProgressFn, Step, ignore
from voxseg.synth.case import random_case
from voxseg.synth.checks import check_grid
from voxseg.synth.paint import paint_ct

_FILES = ("imaging.nii.gz", "segmentation.nii.gz")
"""What each case folder holds (KiTS19 layout)."""


def _label_files(labels_dir: Path, cases: int) -> list[Path]:
    if not labels_dir.is_dir():
        raise InputError(f"{labels_dir}: no such folder; give a KiTS-layout folder of label maps")
    files = sorted(labels_dir.glob("case_*/segmentation.nii.gz"))
    if len(files) < cases:
        raise InputError(
            f"{labels_dir}: holds {len(files)} case_*/segmentation.nii.gz but {cases} cases were "
            "asked for; ask for fewer cases"
        )
    return files[:cases]


def write_dataset(
    out: Path,
    cases: int,
    *,
    shape: tuple[int, int, int] = (64, 64, 64),
    spacing: tuple[float, float, float] = (2.5, 1.6, 1.6),
    seed: int = 0,
    labels_dir: Path | None = None,
    overwrite: bool = False,
    on_progress: ProgressFn = ignore,
) -> list[Path]:
    """Write ``out/case_XXXXX/{imaging,segmentation}.nii.gz`` (KiTS19 layout); case i uses seed + i.

    With `labels_dir`, each case is a real label map copied through unchanged (array, dtype,
    geometry) with an image painted around it; `shape` and `spacing` are then unused.
    `on_progress` hears after each case.
    """
    from voxseg.data.io import read_image, refuse_replacing_inputs, write_image

    out = Path(out)
    if cases < 1:
        raise ConfigError(f"cases is {cases}; ask for at least 1")
    if out.is_file():
        raise OutputExistsError(f"{out}: is a file; give a folder for the dataset")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out}: already exists and is not empty; pass --overwrite to replace it"
        )
    if labels_dir is None:
        check_grid(shape, spacing)
        sources = [None] * cases
    else:
        sources = _label_files(Path(labels_dir), cases)
        outputs = [out / f"case_{i:05d}" / n for i in range(cases) for n in _FILES]
        refuse_replacing_inputs(outputs, sources)

    written = []
    for i, source in enumerate(sources):
        if source is None:
            case = random_case(seed + i, shape, spacing)
            image, label, geometry = case.image, case.label, case.geometry
        else:
            label, geometry = read_image(source)
            image = paint_ct(label, geometry.spacing, seed + i, geometry.direction_matrix)
        folder = out / f"case_{i:05d}"
        for name, array in zip(_FILES, (image, label), strict=True):
            write_image(folder / name, array, geometry, overwrite=overwrite)
        written.append(folder)
        on_progress(Step("synthesising", i + 1, cases))
    return written
