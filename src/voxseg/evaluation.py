"""Score predicted masks against ground truth: per case, summarised, and over summed counts.

Predictions are a folder of masks named ``<case_id>`` + an image suffix (or one mask file);
a voxel is foreground when its value is > 0, or, scored per region (`evaluate_regions`),
when its label value is one of the region's. Ground truth is a folder of masks named the
same way, one mask file, or a labelled dataset in any layout `voxseg.data.discover` knows.
Surface metrics use the ground truth's spacing; definitions are in `voxseg.metrics`.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, fields
from pathlib import Path

import numpy as np

from voxseg.atomic import write_text
from voxseg.data.discovery import discover, folder_case_ids, require_labelled
from voxseg.data.io import (
    check_output,
    image_stem,
    is_image_file,
    read_image,
    read_note,
    refuse_replacing_inputs,
)
from voxseg.errors import InputError
from voxseg.geometry import Geometry
from voxseg.metrics import (
    SURFACE_DICE_DEFINITION,
    CaseMetrics,
    ConfusionCounts,
    case_metrics,
    dice,
    iou,
)
from voxseg.progress import ProgressFn, Step, ignore
from voxseg.regions import BINARY_NOTE, NON_ZERO, Region, describe, label_words, note_regions

METRICS = tuple(f.name for f in fields(CaseMetrics) if f.name != "case_id")

DEFINITIONS = {
    "foreground": "prediction: value > 0; ground truth: label > 0, or the --foreground values",
    "surface": "HD95/ASSD: voxels of a mask with a 6-connected background neighbour, "
    "distances in mm between voxel centres; surface Dice: surface elements on the voxel-corner "
    "grid (marching cubes on each 2x2x2 block of voxels), each weighted by its area in mm^2; "
    "all using the ground truth's spacing",
    "hd95_mm": "max of the two directed 95th percentiles of surface distances "
    "(pred->gt, gt->pred), as MONAI compute_hausdorff_distance(percentile=95)",
    "assd_mm": "mean of the pred->gt and gt->pred surface distances pooled",
    "surface_dice_1mm": "normalised surface Dice at 1 mm: " + SURFACE_DICE_DEFINITION,
    "surface_dice_2mm": "normalised surface Dice at 2 mm: " + SURFACE_DICE_DEFINITION,
    "volume_diff_ml": "predicted volume minus ground-truth volume",
    "empty masks": "both empty: dice, iou, precision, recall, surface dice 1 and distances 0; "
    "exactly one empty: dice, iou, precision, recall, surface dice 0 and distances infinite",
    "null": "an infinite value (a distance with exactly one empty mask) or an undefined one; "
    "JSON has no infinity, the CSV writes inf",
    "summary": "mean/median/std (population)/min/max over the cases whose value is finite; "
    "'excluded' counts the cases left out",
    "global": "metrics of the confusion counts summed over all cases (not a mean of cases)",
}


@dataclass(frozen=True)
class Summary:
    """One metric over the cases; statistics of the finite values only."""

    mean: float
    median: float
    std: float
    """Population standard deviation (ddof=0), so one case gives 0."""
    min: float
    max: float
    n: int
    """Cases used."""
    excluded: int
    """Cases whose value was inf or NaN (e.g. HD95 with one empty mask), left out."""


def summarise(values: Sequence[float]) -> Summary:
    """Statistics of the finite values; NaN everywhere when none is finite."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    excluded = int(arr.size - finite.size)
    if finite.size == 0:
        return Summary(math.nan, math.nan, math.nan, math.nan, math.nan, 0, excluded)
    return Summary(
        mean=float(finite.mean()),
        median=float(np.median(finite)),
        std=float(finite.std()),
        min=float(finite.min()),
        max=float(finite.max()),
        n=int(finite.size),
        excluded=excluded,
    )


@dataclass(frozen=True)
class CasePair:
    """The files of one evaluated case."""

    case_id: str
    pred: Path
    gt: Path
    image: Path | None = None
    """The CT, when the ground truth is a dataset that has one (the report draws on it)."""


@dataclass(frozen=True)
class EvaluationResult:
    cases: tuple[CaseMetrics, ...]
    summary: dict[str, Summary]
    """Metric name (a `CaseMetrics` field) -> its summary over the cases."""
    totals: ConfusionCounts
    """Counts summed over all cases, for the global (dataset-level) Dice and IoU."""
    notes: tuple[str, ...] = ()
    """Things worth knowing that did not stop the evaluation (e.g. predictions without gt)."""
    pairs: tuple[CasePair, ...] = ()
    """The files behind `cases`, in the same order."""

    @property
    def global_dice(self) -> float:
        return dice(self.totals)

    def table(self) -> list[tuple[str, ...]]:
        """Header row, then one row per metric: its summary formatted for printing."""
        rows = [("metric", "mean", "median", "std", "min", "max", "excluded")]
        for name, s in self.summary.items():
            stats = (s.mean, s.median, s.std, s.min, s.max)
            rows.append((name, *(f"{v:.4g}" for v in stats), str(s.excluded)))
        return rows

    def to_dict(self) -> dict:
        """JSON-ready: inf and NaN become None (see DEFINITIONS['null'])."""
        return {
            "definitions": DEFINITIONS,
            "n_cases": len(self.cases),
            "summary": {k: _finite_or_none(asdict(s)) for k, s in self.summary.items()},
            "global": {
                **asdict(self.totals),
                "dice": dice(self.totals),
                "iou": iou(self.totals),
            },
            "cases": [_finite_or_none(asdict(c)) for c in self.cases],
            "notes": list(self.notes),
        }


def _finite_or_none(d: dict) -> dict:
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in d.items()}


def result_paths(out: str | Path) -> tuple[Path, Path]:
    """metrics.json and the per-case table beside it (metrics.csv)."""
    out = Path(out)
    if out.suffix.lower() != ".json":
        raise InputError(
            f"{out}: give a .json file for --out (the per-case CSV is written beside it)"
        )
    return out, out.with_suffix(".csv")


def check_results(out: str | Path, overwrite: bool) -> None:
    """Refuse before any work if either output exists and `overwrite` is not set."""
    for path in result_paths(out):
        check_output(path, overwrite)


def read_files(pairs: Sequence[CasePair]) -> list[Path]:
    """Every file scoring `pairs` read: masks, CTs, and a dataset.json beside their folders."""
    files = [p for pair in pairs for p in (pair.pred, pair.gt, pair.image) if p is not None]
    folders = {f.parent for f in files} | {f.parent.parent for f in files}
    return files + [d / "dataset.json" for d in folders if (d / "dataset.json").is_file()]


def write_results(
    result: EvaluationResult | RegionsResult, out: str | Path, overwrite: bool = False
) -> tuple[Path, Path]:
    """`out` as JSON and the per-case table beside it as CSV (same stem, a `region` column
    when scored per region); both atomic. Never over a file the scores were read from."""
    check_results(out, overwrite)
    refuse_replacing_inputs(result_paths(out), read_files(result.pairs))
    out, csv_path = result_paths(out)
    # allow_nan=False: a stray inf/NaN fails here instead of writing invalid JSON.
    write_text(out, json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    names = [f.name for f in fields(CaseMetrics)]
    if isinstance(result, RegionsResult):
        writer.writerow(["region", *names])
        for region, r in zip(result.regions, result.results, strict=True):
            writer.writerows((region.name, *astuple(c)) for c in r.cases)
    else:
        writer.writerow(names)
        writer.writerows(astuple(c) for c in result.cases)
    write_text(csv_path, buf.getvalue())
    return out, csv_path


def _pred_files(pred: Path) -> dict[str, Path]:
    if is_image_file(pred):
        return {image_stem(pred): pred}
    if not pred.is_dir():
        raise InputError(f"{pred}: no such mask file or folder; check the prediction path")
    files: dict[str, Path] = {}
    masks = [p for p in sorted(pred.iterdir()) if is_image_file(p)]
    for case_id, p in zip(folder_case_ids(masks), masks, strict=True):  # `case_0000`: case
        if case_id in files:
            raise InputError(
                f"{pred}: two predictions for case {case_id} ({files[case_id].name}, {p.name}); "
                "keep one"
            )
        files[case_id] = p
    if not files:
        raise InputError(f"{pred}: no mask files (e.g. <case_id>.nii.gz); check the path")
    return files


def _gt_files(gt: Path) -> tuple[dict[str, tuple[Path, Path | None]], tuple[str, ...]]:
    """Case id -> (ground-truth mask, CT or None), and discovery's notes."""
    if is_image_file(gt):
        return {image_stem(gt): (gt, None)}, ()
    dataset = discover(gt)
    if dataset.layout == "folder":  # a plain folder: its files are the masks
        images = _images_beside(gt)
        return {c.case_id: (c.image, images.get(c.case_id)) for c in dataset.cases}, dataset.notes
    return {c.case_id: (c.label, c.image) for c in require_labelled(dataset)}, dataset.notes


def _images_beside(labels: Path) -> dict[str, Path]:
    """The scans of a labels folder laid out as nnU-Net's (labelsTs beside imagesTs), by
    case id; empty when there is no such folder."""
    if not labels.name.startswith("labels"):
        return {}
    images = labels.with_name("images" + labels.name[len("labels") :])
    if not images.is_dir():
        return {}
    try:
        return {c.case_id: c.image for c in discover(images).cases}
    except InputError:
        return {}


def pair_cases(pred: Path, gt: Path) -> tuple[list[CasePair], list[str]]:
    """Each ground-truth case with its prediction; notes on what was left out."""
    if is_image_file(pred) and is_image_file(gt):  # two files: compare them whatever their names
        return [CasePair(image_stem(pred), pred, gt)], []
    preds = _pred_files(pred)
    gts, gt_notes = _gt_files(gt)
    notes = list(gt_notes)
    if is_image_file(pred):  # one prediction: score that case only
        gts = {k: v for k, v in gts.items() if k in preds}
        if not gts:
            raise InputError(
                f"{gt}: no ground truth for case {next(iter(preds))} (from {pred.name}); "
                "name the prediction after a ground-truth case"
            )
    missing = sorted(set(gts) - set(preds))
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        found = ", ".join(f"{k}" for k in list(preds)[:3]) + (", ..." if len(preds) > 3 else "")
        raise InputError(
            f"{pred}: no prediction for {len(missing)} of {len(gts)} ground-truth cases "
            f"(looked for {missing[0]}.nii.gz or another image suffix; missing: {shown}; found "
            f"cases: {found}); predict them or give a ground truth holding only the "
            "predicted cases"
        )
    extra = sorted(set(preds) - set(gts))
    if extra:
        shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
        notes.append(f"{len(extra)} predictions without ground truth ignored ({shown})")
    return [CasePair(k, preds[k], *gts[k]) for k in sorted(gts)], notes


def _check_same_grid(pair: CasePair, pred: Geometry, gt: Geometry) -> None:
    difference = pred.grid_difference(gt)
    if difference:
        raise InputError(
            f"{pair.pred}: not on the grid of ground truth {pair.gt} "
            f"({difference}); write the prediction on the ground truth's grid "
            "(voxseg predict does) or resample it onto that grid"
        )


def _result(cases: list[CaseMetrics], totals: ConfusionCounts, notes, pairs) -> EvaluationResult:
    summary = {m: summarise([getattr(c, m) for c in cases]) for m in METRICS}
    return EvaluationResult(tuple(cases), summary, totals, tuple(notes), tuple(pairs))


def _read_pair(pair: CasePair) -> tuple[np.ndarray, np.ndarray, Geometry]:
    pred_array, pred_geom = read_image(pair.pred)
    gt_array, gt_geom = read_image(pair.gt)
    _check_same_grid(pair, pred_geom, gt_geom)
    return pred_array, gt_array, gt_geom


@dataclass(frozen=True)
class RegionsResult:
    """Every metric per region (a label map scored region by region, as KiTS19 does)."""

    regions: tuple[Region, ...]
    results: tuple[EvaluationResult, ...]
    """One result per region, same order."""

    @property
    def composite_dice(self) -> float:
        """Mean over regions of the mean Dice over cases: KiTS19's ranking score."""
        return float(np.mean([r.summary["dice"].mean for r in self.results]))

    def case_composite(self) -> dict[str, float]:
        """Per case, the mean of its region Dice scores."""
        per_region = [{c.case_id: c.dice for c in r.cases} for r in self.results]
        return {k: float(np.mean([d[k] for d in per_region])) for k in per_region[0]}

    @property
    def notes(self) -> tuple[str, ...]:
        return self.results[0].notes

    @property
    def pairs(self) -> tuple[CasePair, ...]:
        return self.results[0].pairs

    def to_dict(self) -> dict:
        regions = []
        for region, result in zip(self.regions, self.results, strict=True):
            d = result.to_dict()
            del d["definitions"], d["notes"]
            regions.append({"name": region.name, "labels": region.labels, **d})
        return {
            "definitions": {**DEFINITIONS, **REGION_DEFINITIONS},
            "n_cases": len(self.results[0].cases),
            "composite_dice": self.composite_dice,
            "case_composite_dice": self.case_composite(),
            "regions": regions,
            "notes": list(self.notes),
        }


REGION_DEFINITIONS = {
    "foreground": "per region: prediction and ground truth voxels whose label value is one of "
    "the region's values",
    "composite_dice": "mean over regions of the mean Dice over cases (KiTS19: kidney+tumour "
    "and tumour)",
    "case_composite_dice": "per case, the mean of its region Dice scores",
}


def _check_label_maps(pairs: Sequence[CasePair], regions: tuple[Region, ...]) -> bool:
    """Predictions voxseg wrote say in their header what they hold: refuse a binary model's
    masks, or a label map of other regions, before scoring. Returns whether the first file
    is marked (voxseg wrote it)."""
    wanted = tuple(r.labels for r in regions)
    notes = [read_note(pair.pred) for pair in pairs]
    for pair, note in zip(pairs, notes, strict=True):
        if note == BINARY_NOTE:
            raise InputError(
                f"{pair.pred}: a binary model's mask (its header says so) cannot be scored per "
                "region; evaluate it without --regions (with --foreground), or predict with a "
                "model trained with --regions"
            )
        written = note_regions(note)
        if written is not None and written != wanted:
            shown = ";".join(",".join(map(str, r)) for r in written)
            raise InputError(
                f"{pair.pred}: a label map of regions '{shown}', but --regions asks for "
                f"'{';'.join(','.join(map(str, r or ())) for r in wanted)}'; give --regions "
                f"'{shown}'"
            )
    return bool(notes) and notes[0].startswith("voxseg")


def _score(
    pairs: Sequence[CasePair],
    notes: Sequence[str],
    gt: str | Path,
    regions: tuple[Region, ...],
    read_as: tuple[Region, ...],
    *,
    option: str,
    on_progress: ProgressFn = ignore,
    check_highest: Callable[[int], None] = lambda _highest: None,
) -> RegionsResult:
    """The one scoring loop: every metric per region, region r of a prediction file read as
    `read_as[r]` and of the ground truth as `regions[r]`. `option` names what the user gave
    (`--foreground`, `--regions`) in messages; `check_highest` sees the highest prediction
    value of all cases before the results are checked (files are read once)."""
    cases = [[] for _ in regions]
    totals = [ConfusionCounts(0, 0, 0, 0) for _ in regions]
    highest = 0
    for i, pair in enumerate(pairs, start=1):
        pred_array, gt_array, gt_geom = _read_pair(pair)
        highest = max(highest, int(pred_array.max(initial=0)))
        for r, (region, as_read) in enumerate(zip(regions, read_as, strict=True)):
            pred_mask, gt_mask = as_read.mask(pred_array), region.mask(gt_array)
            totals[r] = totals[r] + ConfusionCounts.from_masks(pred_mask, gt_mask)
            cases[r].append(case_metrics(pair.case_id, pred_mask, gt_mask, gt_geom.spacing))
        on_progress(Step("evaluating", i, len(pairs), pair.case_id))
    check_highest(highest)
    for region, t in zip(regions, totals, strict=True):
        if t.tp + t.fn == 0:
            raise InputError(
                f"{gt}: the ground truth has no voxel of {describe((region,))} in any of "
                f"{len(pairs)} cases: there is nothing to score; check {option} against the "
                "label values `voxseg info` shows"
            )
    return RegionsResult(
        regions, tuple(_result(c, t, notes, pairs) for c, t in zip(cases, totals, strict=True))
    )


def score_as_asked(
    pred: str | Path,
    gt: str | Path,
    *,
    foreground: tuple[int, ...] | None = None,
    regions: tuple[Region, ...] | None = None,
    on_progress: ProgressFn = ignore,
) -> tuple[RegionsResult, tuple[Region, ...]]:
    """Scores as `voxseg evaluate` gives them, and how the predictions were read: per region
    of a label map with `regions`, else the one `foreground` target of {0, 1} masks."""
    if regions:
        return evaluate_regions(pred, gt, regions, on_progress=on_progress), regions
    target = NON_ZERO[0] if foreground is None else Region(label_words(foreground), foreground)
    read_as = (Region(target.name, None),)
    pairs, notes = pair_cases(Path(pred), Path(gt))
    scored = _score(
        pairs, notes, gt, (target,), read_as, option="--foreground", on_progress=on_progress
    )
    return scored, read_as


def evaluate(
    pred: str | Path,
    gt: str | Path,
    *,
    foreground: tuple[int, ...] | None = None,
    on_progress: ProgressFn = ignore,
) -> EvaluationResult:
    """Score every ground-truth case against its prediction as one region (a voxel of the
    prediction is foreground when its value is > 0)."""
    scored, _ = score_as_asked(pred, gt, foreground=foreground, on_progress=on_progress)
    return scored.results[0]


def evaluate_regions(
    pred: str | Path,
    gt: str | Path,
    regions: tuple[Region, ...],
    *,
    on_progress: ProgressFn = ignore,
) -> RegionsResult:
    """Score label-map predictions region by region against label-map ground truth."""
    pairs, notes = pair_cases(Path(pred), Path(gt))
    marked = _check_label_maps(pairs, regions)
    unreachable = [r.name for r in regions if r.labels is not None and 1 not in r.labels]

    def not_binary(highest: int) -> None:  # files voxseg did not write: their values tell
        if highest <= 1 and unreachable and not marked:
            raise InputError(
                f"{pred}: holds binary masks (values 0 and 1 only), but region "
                f"{unreachable[0]!r} needs other label values; score a binary model without "
                "--regions (with --foreground), or predict with a model trained with --regions"
            )

    return _score(
        pairs, notes, gt, regions, regions, option="--regions", on_progress=on_progress,
        check_highest=not_binary,
    )  # fmt: skip
