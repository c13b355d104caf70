"""The planner: a fingerprint of the data plus a pure function, so plans are checked exactly."""

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import blob_case, geometry_for, write_case
from voxseg.config import RunConfig
from voxseg.data import discover
from voxseg.data.io import read_image, write_image
from voxseg.train.fingerprint import Fingerprint, Intensity, measure_fingerprint
from voxseg.train.plan import (
    DEVICE_BUDGETS,
    MIN_PATCH,
    PLANNED_LR,
    TIMED_EPOCHS,
    patch_for,
    plan_default,
    seed_preset,
)

KITS_LIKE = Fingerprint(
    case_ids=("a", "b", "c", "d", "e"),
    shapes=((64, 200, 200), (80, 220, 220), (70, 210, 210), (100, 250, 250), (60, 190, 190)),
    spacings=((4.5, 1.6, 1.6), (4.0, 1.6, 1.6), (5.0, 1.6, 1.6), (3.0, 1.6, 1.6), (4.5, 1.6, 1.6)),
    intensity=Intensity(p005=-40.0, p995=300.0, mean=150.0, std=60.0),
)


def test_patch_keeps_the_median_aspect_within_bounds():
    assert patch_for((64, 221, 221), 0.61e6, 16) == (32, 128, 128)
    assert patch_for((20, 30, 30), 1e9, 16) == (MIN_PATCH, 32, 32)
    assert all(p % 16 == 0 for p in patch_for((97, 333, 301), 2e6, 16))


def test_seed_preset_is_the_keras_recipe():
    c = seed_preset()
    assert c.model.name == "seed" and c.preprocess.shape == (128, 128, 128)
    t = c.train
    assert (t.optimizer, t.lr, t.loss, t.batch_size, t.epochs, t.patience) == (
        "adam",
        1e-3,
        "bce",
        4,
        20,
        3,
    )
    assert t.patch_size is None and t.schedule == "constant" and t.weight_decay == 0
    assert c.infer.window is None


def test_plan_is_exact_and_ignores_a_noisy_throughput():
    kw = {"max_minutes": 10, "device_class": "cpu", "anisotropic": True}
    quiet = plan_default(KITS_LIKE, voxels_per_second=1.5e6, **kw)
    busy = plan_default(KITS_LIKE, voxels_per_second=0.2e6, **kw)
    c = quiet.config
    assert c.preprocess.spacing == (4.5, 1.6, 1.6)  # median; the median case fits the CPU budget
    # Median extents 300 x 336 x 336 mm, x 0.85 (body crop) / spacing = 56.7 x 178.5 x 178.5.
    assert quiet.median_shape == (57, 178, 178)
    # Scaled by (0.6e6 / (57*178*178)) ** (1/3) = 0.69 -> 39.5 x 123 x 123, to multiples of
    # the U-Net's divisor: (8, 16, 16), as 4.5 mm slices are not pooled at the first level.
    assert c.train.patch_size == (40, 128, 128) and c.infer.window == c.train.patch_size
    assert c.preprocess.hu_window == (-40.0, 300.0) and (c.preprocess.mean, c.preprocess.std) == (
        150.0,
        60.0,
    )
    assert c.model.options == {
        "base_channels": DEVICE_BUDGETS["cpu"].base_channels,
        "strides": [[1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        "kernels": [[1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]],
    }
    assert c.train.lr == PLANNED_LR and c.train.optimizer == "adamw"
    # With a time budget the clock ends training: no epoch count, no early stopping.
    assert (c.train.epochs, c.train.patience, c.train.max_minutes) == (TIMED_EPOCHS, 0, 10)
    # With a time budget a 7x lower reading changes nothing (the epoch length is a ratio of
    # validation to step time, in which the throughput cancels); it is only recorded.
    assert busy.config == c and busy.voxels_per_second == 0.2e6
    c.validate()


def test_plan_coarsens_large_data_within_the_limit():
    fine = Fingerprint(
        ("a",), ((600, 512, 512),), ((0.8, 0.78, 0.78),), Intensity(-50, 300, 120, 60)
    )
    plan = plan_default(fine, voxels_per_second=1e6, max_minutes=None, device_class="cpu")
    spacing = plan.config.preprocess.spacing
    assert spacing == (1.6, 1.56, 1.56)  # every axis at 2x its median: the limit
    assert any("coarsened to the limit" in n for n in plan.notes)
    gpu = plan_default(fine, voxels_per_second=1e6, max_minutes=None, device_class="gpu")
    assert min(gpu.config.preprocess.spacing) < min(spacing)  # a GPU affords a finer grid
    assert (
        plan.config.train.epochs >= 1 and plan.config.train.patience == RunConfig().train.patience
    )


def test_fingerprint_reads_the_data_once_and_round_trips(kits_tiny: Path):
    cases = discover(kits_tiny).labelled
    fp = measure_fingerprint(cases, foreground=None)
    assert fp.case_ids == tuple(c.case_id for c in cases)
    # conftest writes (16, 20, 24) arrays with spacing (2.5, 1.2, 0.8) and an I,P,L direction.
    assert set(fp.shapes) == {(24, 20, 16)}
    assert all(s == pytest.approx((0.8, 1.2, 2.5)) for s in fp.spacings)  # float32 in NIfTI
    assert 120 < fp.intensity.mean < 240  # the organ is ~180 HU
    assert Fingerprint.from_dict(fp.to_dict()) == fp


@pytest.mark.parametrize("minutes", [None, 2.0])
def test_plan_from_a_measured_fingerprint_validates(kits_tiny: Path, minutes):
    fp = measure_fingerprint(discover(kits_tiny).labelled, foreground=None)
    plan = plan_default(fp, voxels_per_second=1e6, max_minutes=minutes, device_class="cpu")
    plan.config.validate()
    assert all(p % 16 == 0 for p in plan.config.train.patch_size)


def test_the_thick_slice_topology_can_be_turned_off():
    iso = plan_default(
        KITS_LIKE, voxels_per_second=1e6, max_minutes=10, device_class="cpu", anisotropic=False
    )
    assert iso.config.model.options == {"base_channels": DEVICE_BUDGETS["cpu"].base_channels}
    assert iso.config.train.patch_size == (32, 128, 128)  # multiples of 16 on every axis


def test_width_replaces_the_device_default_and_keeps_the_topology():
    from voxseg.config import ModelConfig
    from voxseg.train.plan import planned_model

    default = planned_model(ModelConfig(), "cpu", (5.0, 1.6, 1.6))
    wide = planned_model(ModelConfig(), "cpu", (5.0, 1.6, 1.6), width=16)
    assert default.options["base_channels"] == 8 and wide.options["base_channels"] == 16
    assert wide.options["strides"] == default.options["strides"]


def _two_label_cases(root: Path, tumour_hu: float) -> list:
    """A large label 1 near 180 HU and a label 2 a few % of its size at `tumour_hu`."""
    for i in range(3):
        image, label = blob_case(shape=(20, 32, 32), seed=i)
        rng = np.random.default_rng(i)
        image = image.astype(np.float32)
        label[label == 2] = 1
        centre = np.argwhere(label).mean(axis=0)
        grid = np.indices(label.shape) - centre[:, None, None, None]
        small = (label == 1) & ((grid**2).sum(axis=0) < 2.5**2)
        label[small] = 2
        image[small] = tumour_hu + rng.normal(0, 5, int(small.sum()))
        write_case(root / f"case_{i:05d}", image.astype(np.int16), label, geometry_for(image.shape))
    return discover(root).labelled


@pytest.mark.parametrize("tumour_hu", [-20.0, 60.0, 320.0])
def test_the_window_covers_every_label_however_small(tmp_path: Path, tumour_hu):
    cases = _two_label_cases(tmp_path / f"d{tumour_hu}", tumour_hu)
    stats = measure_fingerprint(cases, foreground=None).intensity
    one, two = stats.by_label
    assert (one.value, two.value) == (1, 2)
    assert two.samples < one.samples / 5  # the small label is outvoted when voxels are pooled
    assert stats.p005 <= min(one.p005, two.p005) and stats.p995 >= max(one.p995, two.p995)
    assert stats.p005 < tumour_hu < stats.p995
    # Equal weights: the mean sits halfway between the labels' means, not near the large one.
    assert stats.mean == pytest.approx((one.mean + two.mean) / 2)
    assert stats.std > abs(one.mean - two.mean) / 2 - 1
    assert Fingerprint.from_dict(measure_fingerprint(cases, None).to_dict()).intensity == stats


def test_a_few_stray_label_voxels_do_not_stretch_the_window(tmp_path: Path):
    cases = _two_label_cases(tmp_path / "d", 60.0)
    for case in cases:  # a slip of the brush: three voxels of label 3 in the air
        label, geometry = read_image(case.label)
        label[0, 0, :3] = 3
        write_image(case.label, label, geometry, overwrite=True)
    stats = measure_fingerprint(cases, None).intensity
    assert [(b.value, b.samples) for b in stats.by_label][2] == (3, 9)  # recorded
    assert stats.p005 > -900  # but the window is still the real labels'


def test_the_window_ignores_labels_outside_the_target(tmp_path: Path):
    cases = _two_label_cases(tmp_path / "d", -20.0)
    stats = measure_fingerprint(cases, foreground=(1,)).intensity
    assert [b.value for b in stats.by_label] == [1]
    assert stats.p005 > 100  # the dark label 2 is not the target: it does not widen the window


def test_a_fingerprint_without_per_label_intensity_still_loads():
    d = KITS_LIKE.to_dict()
    d["intensity"].pop("by_label", None)
    assert Fingerprint.from_dict(d).intensity.p005 == KITS_LIKE.intensity.p005


KITS_32 = Fingerprint(
    case_ids=tuple(f"c{i}" for i in range(32)),
    shapes=((80, 250, 250),) * 32,
    spacings=((4.0, 1.6, 1.6),) * 32,
    intensity=Intensity(p005=-40.0, p995=300.0, mean=150.0, std=60.0),
)


def test_a_short_budget_plans_a_coarser_grid_and_a_long_one_the_data_grid():
    from voxseg.train.plan import budget_case_voxels

    def plan(minutes, **kw):
        return plan_default(
            KITS_32, voxels_per_second=1e6, max_minutes=minutes, device_class="cpu", **kw
        )

    grids = {m: plan(m).config.preprocess.spacing for m in (5, 10, 20, 60, 600)}
    data_grid = plan(None).config.preprocess.spacing
    assert data_grid == (4.0, 1.6, 1.6)
    # 26 training cases (20 % validate): the grid coarsens as the budget shrinks, never past
    # MAX_COARSENING times the median spacing, and a long budget trains on the data's grid.
    in_plane = [grids[m][1] for m in (5, 10, 20, 60, 600)]
    assert in_plane == sorted(in_plane, reverse=True) and in_plane[0] > in_plane[-1]
    assert grids[600] == data_grid
    assert all(a <= 2 * d for g in grids.values() for a, d in zip(g, data_grid, strict=True))
    # At 10 minutes the body-cropped median case fits what the budget affords per case.
    ten = plan(10)
    affordable = budget_case_voxels(10, 26, DEVICE_BUDGETS["cpu"])
    assert np.prod(ten.median_shape) <= affordable * 1.05  # rounding to whole voxels
    assert any("10-minute budget" in n for n in ten.notes)
    # The measured throughput still plays no part, and the data grid can be asked for.
    assert (
        plan(10).config
        == plan_default(KITS_32, voxels_per_second=0.1e6, max_minutes=10, device_class="cpu").config
    )
    assert plan(10, budget_grid=False).config.preprocess.spacing == data_grid
    # A GPU affords the data's grid at 10 minutes.
    gpu = plan_default(KITS_32, voxels_per_second=1e6, max_minutes=10, device_class="gpu")
    assert gpu.config.preprocess.spacing == data_grid


@pytest.mark.slow
def test_the_users_lr_wins_over_the_planned_one(tmp_path, kits_tiny):
    import json

    from tests.test_cli import invoke

    args = ("--epochs", "1", "--steps-per-epoch", "1", "--lr", "0.0005")
    result = invoke("train", "--data", kits_tiny, "--out", tmp_path / "run", *args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))
    assert config["model"]["name"] == "unet" and config["train"]["lr"] == 0.0005
