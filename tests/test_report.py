"""The HTML report: self-contained, worst cases first, radiological views, renders in a browser."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import IDENTITY, IPL, blob_case, geometry_for, write_case
from voxseg.config import RunConfig
from voxseg.data.io import write_image
from voxseg.errors import ConfigError, InputError, OutputExistsError
from voxseg.geometry import Geometry, Reorientation
from voxseg.plots import best_slices, overlay_png, view_slice
from voxseg.report import write_report
from voxseg.run_folder import EpochRecord, RunFolder

IMG = '<img src="data:image/png;base64,'
PERFECT, SHIFTED = "case_00000", "case_00001"


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    config = RunConfig().override({"preprocess.spacing": (2.0, 1.0, 1.0)})
    (run / "config.json").write_text(config.to_json())
    (run / "metrics.csv").write_text(
        "epoch,steps,train_loss,val_loss,val_dice,lr,seconds\n"
        "1,4,0.9,0.95,0.2,0.001,1.5\n"
        "2,4,0.6,0.7,0.55,0.0008,1.4\n"
        "3,4,0.4,0.5,0.71,0.0005,1.4\n",
        encoding="utf-8",
    )
    state = {"epoch": 3, "best_dice": 0.71, "best_epoch": 3, "stopped": "epochs", "history": []}
    (run / "state.json").write_text(json.dumps(state))
    return run


def _write_dataset(root: Path, direction=IPL) -> Path:
    """Two labelled KiTS19-layout cases on an anisotropic, non-identity grid."""
    for i in range(2):
        image, label = blob_case(seed=i)
        write_case(
            root / f"case_{i:05d}", image, label, geometry_for(image.shape, direction=direction)
        )
    return root


def _write_preds(gt_root: Path, out: Path) -> Path:
    """A perfect prediction for case 0 and one shifted by 4 voxels for case 1."""
    from voxseg.data.io import read_image

    for case_id, shift in ((PERFECT, 0), (SHIFTED, 4)):
        label, geometry = read_image(gt_root / case_id / "segmentation.nii.gz")
        write_image(
            out / f"{case_id}.nii.gz", np.roll(label > 0, shift, axis=2).astype(np.uint8), geometry
        )
    return out


@pytest.fixture
def kits_gt(tmp_path: Path) -> Path:
    return _write_dataset(tmp_path / "kits")


@pytest.fixture
def preds(kits_gt: Path, tmp_path: Path) -> Path:
    return _write_preds(kits_gt, tmp_path / "pred")


def _pngs(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_full_report_is_self_contained_worst_case_first(run_dir, kits_gt, preds, tmp_path):
    out = write_report(run_dir, tmp_path / "report.html", pred_dir=preds, gt=kits_gt)
    page = out.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert 'src="file' not in page and "<script" not in page and "<link" not in page
    assert page.count(IMG) == 3  # curves + one overlay per case
    assert all(png.startswith(b"\x89PNG") for png in _pngs(page))
    assert page.index(f'id="case-{SHIFTED}"') < page.index(f'id="case-{PERFECT}"')
    per_case = page.split("Per case")[1]
    assert per_case.index(SHIFTED) < per_case.index(PERFECT)
    assert "Accuracy is not reported" in page
    assert "best validation Dice" in page and "0.7100 at epoch 3" in page
    assert f"<dd>{RunConfig().model.name}</dd>" in page
    assert not list(tmp_path.glob(".report.html.*"))  # no temporary left behind


def test_refuses_to_overwrite(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "report.html")
    with pytest.raises(OutputExistsError):
        write_report(run_dir, out)
    assert write_report(run_dir, out, overwrite=True) == out


def test_run_only_and_run_without_metrics(run_dir, tmp_path):
    page = write_report(run_dir, tmp_path / "a.html").read_text(encoding="utf-8")
    assert page.count(IMG) == 1 and "Evaluation" not in page
    (run_dir / "metrics.csv").unlink()
    page = write_report(run_dir, tmp_path / "b.html").read_text(encoding="utf-8")
    assert page.count(IMG) == 0 and "No epochs recorded yet" in page


def test_predictions_without_run_and_mask_folder_ground_truth(kits_gt, preds, tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for case in sorted(kits_gt.iterdir()):
        shutil.copy(case / "segmentation.nii.gz", masks / f"{case.name}.nii.gz")
    page = write_report(None, tmp_path / "r.html", pred_dir=preds, gt=masks).read_text(
        encoding="utf-8"
    )
    assert page.count(IMG) == 2 and "Training curves" not in page
    assert page.count("no CT image, masks on grey") == 2


def test_max_cases_limits_overlays(kits_gt, preds, tmp_path):
    page = write_report(None, tmp_path / "r.html", pred_dir=preds, gt=kits_gt, max_cases=1)
    page = page.read_text(encoding="utf-8")
    assert page.count(IMG) == 1 and f'id="case-{SHIFTED}"' in page
    assert "1 better cases not shown" in page


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"pred_dir": Path("p")},
        {"gt": Path("g")},
        {"pred_dir": Path("p"), "gt": Path("g"), "max_cases": -1},
    ],
)
def test_bad_arguments_raise_config_error(kwargs, tmp_path):
    with pytest.raises(ConfigError):
        write_report(None, tmp_path / "r.html", **kwargs)


def _to_identity(src: Path, dst: Path) -> None:
    """Rewrite `src` in the canonical layout with an identity direction: same anatomy."""
    from voxseg.data.io import read_image

    array, geometry = read_image(src)
    r = Reorientation.to_canonical(geometry)
    canonical = r.apply_geometry(geometry)
    write_image(
        dst,
        r.apply(array),
        Geometry(canonical.shape, canonical.spacing, canonical.origin, IDENTITY),
    )


def test_overlays_do_not_depend_on_file_orientation(tmp_path):
    """The same anatomy stored as I,P,L and as L,P,S gives identical pictures."""
    ipl = _write_dataset(tmp_path / "ipl")
    pred_ipl = _write_preds(ipl, tmp_path / "pred_ipl")
    lps, pred_lps = tmp_path / "lps", tmp_path / "pred_lps"
    for case in sorted(ipl.iterdir()):
        for name in ("imaging.nii.gz", "segmentation.nii.gz"):
            _to_identity(case / name, lps / case.name / name)
        _to_identity(pred_ipl / f"{case.name}.nii.gz", pred_lps / f"{case.name}.nii.gz")
    pages = [
        write_report(None, tmp_path / f"{n}.html", pred_dir=p, gt=g).read_text(encoding="utf-8")
        for n, p, g in (("a", pred_ipl, ipl), ("b", pred_lps, lps))
    ]
    assert len(_pngs(pages[0])) == 2
    assert _pngs(pages[0]) == _pngs(pages[1])


def test_views_are_radiological():
    """Canonical axes run to (superior, posterior, left); a marker at the superior-anterior-
    left corner must land top-right in axial/coronal (patient's left on the viewer's right)
    and top-left in sagittal (anterior on the left)."""
    volume = np.zeros((4, 5, 6))
    volume[-1, 0, -1] = 1
    assert view_slice(volume, "axial", 3)[0, -1] == 1
    assert view_slice(volume, "coronal", 0)[0, -1] == 1
    assert view_slice(volume, "sagittal", 5)[0, 0] == 1
    with pytest.raises(ValueError, match="unknown view"):
        view_slice(volume, "oblique", 0)


def test_best_slices_pick_the_most_foreground():
    mask = np.zeros((6, 7, 8), bool)
    mask[2, 1:6, 1:7] = True  # a big axial sheet at slice 2
    mask[4, 3, 5] = True
    assert best_slices(mask) == (2, 3, 5)
    assert best_slices(np.zeros((6, 7, 8), bool)) == (3, 3, 4)


def test_overlay_png_is_small_and_checks_shapes():
    image, label = blob_case()
    png = overlay_png(image, label > 0, np.roll(label > 0, 2, axis=1), (2.5, 1.2, 0.8), "t")
    assert png.startswith(b"\x89PNG") and len(png) < 150_000
    assert overlay_png(None, label > 0, label > 0, (1, 1, 1), "no ct").startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="shapes differ"):
        overlay_png(None, label > 0, label[:-1] > 0, (1, 1, 1), "t")


def test_metrics_csv_of_an_older_run_reads(run_dir):
    """metrics.csv without the smoothed score or time columns (voxseg 0.1) still reads."""
    points = RunFolder(run_dir).read_metrics()
    assert [p.epoch for p in points] == [1, 2, 3] and points[-1].val_dice == pytest.approx(0.71)
    assert points[-1].val_score == pytest.approx(0.71) and math.isnan(points[-1].val_seconds)


def test_metrics_csv_round_trip(tmp_path):
    run = RunFolder(tmp_path)
    rec = EpochRecord(1, 4, 0.5, 0.6, 0.7, 0.65, 1e-3, 2.0, 1.5, 0.2, 0.3, 2.0)
    run.write_metrics([rec, replace(rec, epoch=2)])
    assert run.read_metrics() == [rec, replace(rec, epoch=2)]
    (tmp_path / "metrics.csv").write_text("epoch,steps\nx,1\n", encoding="utf-8")
    with pytest.raises(InputError, match="metrics.csv:2"):
        run.read_metrics()


def test_report_renders_in_a_browser(run_dir, kits_gt, preds, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian chromium not installed (CI installs it)")
    report = write_report(run_dir, tmp_path / "report.html", pred_dir=preds, gt=kits_gt)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,1600",
            report.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shot.is_file(), f"no screenshot; chromium said: {proc.stderr[-2000:]}"
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    non_white = np.mean(pixels.min(axis=-1) < 0.9)
    assert pixels.std() > 0.1, "screenshot is near-uniform: nothing rendered"
    assert non_white > 0.05, f"only {non_white:.1%} of the screenshot is not white"
