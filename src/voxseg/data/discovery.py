"""Find cases on disk in the layouts people actually have, and split them.

Layouts:
- ``kits19``: ``root/case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` (or under ``root/data``)
- ``kits21``: ``root/dataset/case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz`` or
  ``aggregated_MAJ_seg.nii.gz`` (KiTS21 / KiTS23)
- ``msd``: Medical Segmentation Decathlon / nnU-Net raw: ``imagesTr/X_0000.nii.gz`` or
  ``imagesTr/X.nii.gz`` + ``labelsTr/X.nii.gz``; ``imagesTs/`` cases are unlabelled
- ``folder``: a plain folder of image files (unlabelled, for prediction)
- ``file``: a single image file (unlabelled)
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from voxseg.data.dataset_json import read_dataset_json
from voxseg.data.io import IMAGE_SUFFIXES, image_stem, is_dicom_dir, is_image_file
from voxseg.errors import ConfigError, InputError
from voxseg.regions import Region

Layout = Literal["kits19", "kits21", "msd", "folder", "file"]
KITS_IMAGE = "imaging.nii.gz"
KITS_IMAGES = (KITS_IMAGE, "imaging.nii")
KITS_LABELS = (
    *("segmentation.nii.gz", "segmentation.nii"),
    *("aggregated_MAJ_seg.nii.gz", "aggregated_MAJ_seg.nii"),
)
"""A case's label, compressed or not (KiTS21 names the majority vote aggregated_MAJ_seg)."""


def _first(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_file()), None)


_CASE_DIR = re.compile(r"^case_\d+$")
_MSD_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One scan and, when known, its label map."""

    case_id: str
    image: Path
    label: Path | None = None

    @property
    def labelled(self) -> bool:
        return self.label is not None


@dataclass(frozen=True)
class Dataset:
    root: Path
    layout: Layout
    cases: tuple[Case, ...]
    notes: tuple[str, ...] = field(default=())
    """Things discovery skipped, worded for the user (e.g. a case folder without an image)."""
    label_names: dict[int, str] = field(default_factory=dict)
    """Label value -> name, from the dataset's dataset.json (empty when it has none)."""
    regions: tuple[Region, ...] = ()
    """Regions its dataset.json declares (nnU-Net's region-based labels), outermost first."""

    @property
    def labelled(self) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if c.labelled)

    @property
    def unlabelled(self) -> tuple[Case, ...]:
        return tuple(c for c in self.cases if not c.labelled)


def _subdirs(path: Path) -> list[Path]:
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return []
    out = []
    for p in entries:
        try:
            if p.is_dir():  # follows symlinks; a symlink loop raises or returns False
                out.append(p)
        except OSError:
            continue
    return out


def _kits_cases(base: Path) -> tuple[list[Case], list[str]]:
    cases, notes = [], []
    for d in _subdirs(base):
        if not _CASE_DIR.match(d.name):
            continue
        image, label = _first(d, KITS_IMAGES), _first(d, KITS_LABELS)
        if image is None:
            notes.append(f"{d}: no {KITS_IMAGE}, skipped")
            continue
        cases.append(Case(d.name, image, label))
    return cases, notes


def _image_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if is_image_file(p))
    except OSError:
        return []


def _channel_groups(files: list[Path], labels: dict[str, Path]) -> dict[str, list[Path]]:
    """Case id -> its files. nnU-Net names channels `<case>_0000`, `_0001`...; a `_dddd` suffix
    is read as a channel only when the case has a `_0000` file, so ids such as patient_0001,
    patient_0002 stay separate cases."""
    stems = {image_stem(p): p for p in files}
    groups: dict[str, list[Path]] = {}
    for stem, p in sorted(stems.items()):
        m = _MSD_CHANNEL.match(stem)
        is_channel = m and stem not in labels and f"{m.group('case')}_0000" in stems
        groups.setdefault(m.group("case") if is_channel else stem, []).append(p)
    return groups


def folder_case_ids(files: list[Path]) -> list[str]:
    """The case id of each file of a folder: its name without the image suffix, and without
    the channel suffix when every name ends in `_0000` (nnU-Net single-channel scans, as in
    imagesTs), as nnU-Net names them and as labelsTs does."""
    stems = [image_stem(f) for f in files]
    if all(s.endswith("_0000") and len(s) > 5 for s in stems):
        return [s[: -len("_0000")] for s in stems]
    return stems


def _msd_cases(root: Path, ending: str | None) -> tuple[list[Case], list[str]]:
    """`ending` (dataset.json's file_ending) keeps only files with that ending when known."""

    def files(sub: str) -> list[Path]:
        found = _image_files(root / sub)
        return [p for p in found if p.name.endswith(ending)] if ending else found

    cases, notes = [], []
    labels = {image_stem(p): p for p in files("labelsTr")}
    for sub, labelled in (("imagesTr", True), ("imagesTs", False)):
        for case_id, files_ in _channel_groups(files(sub), labels).items():
            if len(files_) > 1:
                raise InputError(
                    f"{files_[0].parent}: case {case_id} has {len(files_)} channels "
                    f"({', '.join(f.name for f in files_[:3])}); voxseg segments single-channel "
                    "scans: keep one channel per case (e.g. the CT, _0000)"
                )
            label = labels.get(case_id) if labelled else None
            if labelled and label is None:
                notes.append(f"{files_[0]}: no label in labelsTr, listed as unlabelled")
            cases.append(Case(case_id, files_[0], label))
    return cases, notes


def _unique_ids(root: Path, cases: Sequence[Case]) -> None:
    """Two scans with one case id would write one output over the other: refuse."""
    seen: dict[str, Path] = {}
    for case in cases:
        if case.case_id in seen:
            raise InputError(
                f"{root}: {seen[case.case_id].name} and {case.image.name} are both case "
                f"{case.case_id!r}; rename or move one of them"
            )
        seen[case.case_id] = case.image


def discover(root: str | Path) -> Dataset:
    """Recognise the layout under `root` and list its cases (sorted by case id)."""
    root = Path(root)
    if not root.exists():
        raise InputError(f"{root}: no such file or folder; check the path")
    if is_image_file(root):
        return Dataset(root, "file", (Case(image_stem(root), root),))
    if not root.is_dir():
        raise InputError(
            f"{root}: not an image file ({', '.join(IMAGE_SUFFIXES)}) or a folder; check the path"
        )
    image = _first(root, KITS_IMAGES)
    if image is not None:  # one KiTS case folder: its scan, never its labels
        return Dataset(root, "kits19", (Case(root.name, image, _first(root, KITS_LABELS)),))
    for base, layout in ((root, "kits19"), (root / "data", "kits19"), (root / "dataset", "kits21")):
        if base.is_dir():
            cases, notes = _kits_cases(base)
            if cases:
                has_maj = any(c.label and c.label.name.startswith("aggregated") for c in cases)
                return Dataset(root, "kits21" if has_maj else layout, tuple(cases), tuple(notes))
    if (root / "imagesTr").is_dir() or (root / "imagesTs").is_dir():
        described = read_dataset_json(root)
        ending = described.file_ending if described else None
        cases, notes = _msd_cases(root, ending)
        if cases:
            _unique_ids(root, cases)
            names = described.labels if described else {}
            regions = described.regions if described else ()
            return Dataset(root, "msd", tuple(cases), tuple(notes), names, regions)
        if ending and (_image_files(root / "imagesTr") or _image_files(root / "imagesTs")):
            raise InputError(
                f"{root / 'dataset.json'}: its file_ending {ending!r} matches no image in "
                "imagesTr/ or imagesTs/; correct file_ending"
            )
    files = _image_files(root)
    if files:
        cases = [Case(k, p) for k, p in zip(folder_case_ids(files), files, strict=True)]
        _unique_ids(root, cases)
        return Dataset(root, "folder", tuple(cases))
    dicom = [d for d in [root, *_subdirs(root)] if is_dicom_dir(d)]
    if dicom:
        return Dataset(root, "folder", tuple(Case(d.name, d) for d in dicom))
    raise InputError(
        f"{root}: no cases found; expected case_XXXXX/imaging.nii.gz (KiTS), "
        "imagesTr/ + labelsTr/ (MSD/nnU-Net), or image files"
    )


def require_labelled(dataset: Dataset, minimum: int = 1) -> tuple[Case, ...]:
    cases = dataset.labelled
    if len(cases) < minimum:
        raise InputError(
            f"{dataset.root}: {len(cases)} labelled cases, need at least {minimum}; "
            "add label files (e.g. case_XXXXX/segmentation.nii.gz)"
        )
    return cases


def split_cases(
    cases: Sequence[Case],
    *,
    val_fraction: float = 0.2,
    val_cases: Sequence[str] = (),
    seed: int = 0,
) -> tuple[list[Case], list[Case]]:
    """Deterministic train/validation split: named `val_cases`, else a seeded fraction."""
    if val_cases:
        wanted = set(val_cases)
        unknown = wanted - {c.case_id for c in cases}
        if unknown:
            raise ConfigError(f"--val-cases: unknown case ids {sorted(unknown)}")
        if wanted >= {c.case_id for c in cases}:
            raise ConfigError(
                f"--val-cases names all {len(cases)} cases: none is left to train on; "
                "validate on fewer cases"
            )
        return [c for c in cases if c.case_id not in wanted], [
            c for c in cases if c.case_id in wanted
        ]
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction {val_fraction}: must be in [0, 1)")
    order = list(cases)
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(order) * val_fraction)) if val_fraction > 0 and len(order) > 1 else 0
    n_val = min(n_val, len(order) - 1)  # at least one case is left to train on
    val_ids = {c.case_id for c in order[:n_val]}
    return [c for c in cases if c.case_id not in val_ids], [
        c for c in cases if c.case_id in val_ids
    ]
