"""evaluate() on real NIfTI files: mask folders, a KiTS-layout ground truth, and the errors."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import geometry_for, oblique_direction
from voxseg.data.io import write_image
from voxseg.errors import InputError
from voxseg.evaluation import EvaluationResult, evaluate, summarise, write_results

# Array order: axis 0 is 2 mm; the direction is oblique and flipped, so only array-order
# spacing (not the ITK order, nor the world axes) gives the values below.
GEOM = geometry_for((20, 20, 20), spacing=(2.0, 1.0, 1.0), direction=oblique_direction())


def cube(shift=(0, 0, 0)) -> np.ndarray:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[tuple(slice(5 + s, 15 + s) for s in shift)] = 1
    return mask


def write_masks(folder: Path, masks: dict[str, np.ndarray], geometry=GEOM) -> Path:
    for case_id, mask in masks.items():
        write_image(folder / f"{case_id}.nii.gz", mask, geometry)
    return folder


def strict_json(text: str):
    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    # a: shifted one voxel along the 2 mm axis (Dice 0.9, HD95 2 mm; see test_metrics)
    # b: perfect; c: empty prediction of a non-empty case (HD95 inf)
    gt = write_masks(tmp_path / "gt", {"a": cube(), "b": cube(), "c": cube()})
    pred = write_masks(
        tmp_path / "pred", {"a": cube((1, 0, 0)), "b": cube(), "c": np.zeros_like(cube())}
    )
    return pred, gt


def test_folders_of_masks(folders, tmp_path):
    pred, gt = folders
    ticks = []
    result = evaluate(pred, gt, on_progress=ticks.append)
    assert len(ticks) == 3
    by_id = {c.case_id: c for c in result.cases}
    assert list(by_id) == ["a", "b", "c"]
    assert by_id["a"].dice == pytest.approx(0.9)
    assert by_id["a"].iou == pytest.approx(9 / 11)
    assert by_id["a"].hd95_mm == pytest.approx(2.0)
    # Published NSD (see tests/test_metrics.py::test_shift_along_2mm_axis for the derivation).
    nsd = 1 - (131.5 + 18 * math.sqrt(5)) / (813 + 36 * math.sqrt(2) + 36 * math.sqrt(5))
    assert by_id["a"].surface_dice_1mm == pytest.approx(nsd)
    assert by_id["a"].volume_gt_ml == pytest.approx(2.0)  # 1000 voxels x 2 mm^3
    assert by_id["b"].dice == 1.0 and by_id["b"].hd95_mm == 0.0
    assert by_id["c"].dice == 0.0 and math.isinf(by_id["c"].hd95_mm)
    # Dice mean over (0.9, 1, 0) = 0.6333; HD95 over finite (2, 0) = 1 with one excluded.
    assert result.summary["dice"].mean == pytest.approx(1.9 / 3)
    assert result.summary["hd95_mm"].mean == pytest.approx(1.0)
    assert result.summary["hd95_mm"].excluded == 1
    # Global Dice from summed counts: tp = 900 + 1000 + 0, fp = 100, fn = 100 + 0 + 1000.
    assert result.global_dice == pytest.approx(2 * 1900 / (2 * 1900 + 100 + 1100))
    assert result.notes == ()
    assert result.table()[0][0] == "metric" and len(result.table()) == 1 + 11


def test_written_json_is_valid_and_csv_has_every_case(folders, tmp_path):
    result = evaluate(*folders)
    json_path, csv_path = write_results(result, tmp_path / "out" / "metrics.json")
    data = strict_json(json_path.read_text(encoding="utf-8"))
    assert csv_path == tmp_path / "out" / "metrics.csv"
    case_c = next(c for c in data["cases"] if c["case_id"] == "c")
    assert case_c["hd95_mm"] is None and "null" in data["definitions"]
    assert data["summary"]["hd95_mm"]["excluded"] == 1
    assert data["global"]["tp"] == 1900
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["case_id"] for r in rows] == ["a", "b", "c"]
    assert float(rows[0]["dice"]) == pytest.approx(0.9)
    assert rows[2]["hd95_mm"] == "inf"


def test_kits_layout_ground_truth_and_foreground(tmp_path):
    # Label 1 fills the cube except its last axis-0 slice, which is label 2 (100 voxels).
    label = cube()
    label[14, 5:15, 5:15] = 2
    root = tmp_path / "kits" / "case_00000"
    root.mkdir(parents=True)
    write_image(root / "imaging.nii.gz", np.zeros((20, 20, 20), np.int16), GEOM)
    write_image(root / "segmentation.nii.gz", label, GEOM)
    pred = write_masks(tmp_path / "pred", {"case_00000": (label == 1).astype(np.uint8)})
    # All labels: tp = 900, fn = 100 -> Dice 1800 / 1900. Only label 1: a perfect 1.0.
    everything = evaluate(pred, tmp_path / "kits")
    assert everything.cases[0].dice == pytest.approx(1800 / 1900)
    assert evaluate(pred, tmp_path / "kits", foreground=(1,)).cases[0].dice == 1.0
    assert evaluate(pred, tmp_path / "kits", foreground=(2,)).cases[0].dice == 0.0


def test_single_prediction_file_against_a_dataset(folders):
    pred, gt = folders
    result = evaluate(pred / "a.nii.gz", gt)
    assert [c.case_id for c in result.cases] == ["a"]
    assert result.cases[0].dice == pytest.approx(0.9)


def test_grid_mismatch_names_both_files(tmp_path):
    gt = write_masks(tmp_path / "gt", {"a": cube()})
    moved = geometry_for((20, 20, 20), spacing=(2.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    pred = write_masks(tmp_path / "pred", {"a": cube()}, geometry=moved)
    with pytest.raises(InputError) as err:
        evaluate(pred, gt)
    message = str(err.value)
    assert "\n" not in message
    assert str(pred / "a.nii.gz") in message and str(gt / "a.nii.gz") in message
    assert "resample" in message


def test_missing_predictions_are_listed(tmp_path):
    gt = write_masks(tmp_path / "gt", {f"k{i}": cube() for i in range(8)})
    pred = write_masks(tmp_path / "pred", {"k0": cube()})
    with pytest.raises(InputError, match=r"7 of 8 .*k1, k2, k3, k4, k5, \.\.\."):
        evaluate(pred, gt)


def test_predictions_without_ground_truth_are_noted(tmp_path):
    gt = write_masks(tmp_path / "gt", {"a": cube()})
    pred = write_masks(tmp_path / "pred", {"a": cube(), "stray": cube()})
    result = evaluate(pred, gt)
    assert [c.case_id for c in result.cases] == ["a"]
    assert any("stray" in n for n in result.notes)


def test_summary_of_no_finite_values_is_null_in_json(tmp_path):
    s = summarise([math.inf, math.nan])
    assert s.n == 0 and s.excluded == 2 and math.isnan(s.mean)
    result = EvaluationResult(cases=(), summary={"hd95_mm": s}, totals=_zero_counts())
    path, _ = write_results(result, tmp_path / "m.json")
    assert strict_json(path.read_text(encoding="utf-8"))["summary"]["hd95_mm"]["mean"] is None


def _zero_counts():
    from voxseg.metrics import ConfusionCounts

    return ConfusionCounts(0, 0, 0, 0)
