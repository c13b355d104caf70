from pathlib import Path

import torch

from voxseg.data import discover
from voxseg.train.plan import MIN_PATCH, patch_for, plan_default, seed_preset


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
    assert t.patch_size is None and t.schedule == "constant"


def test_plan_from_data_and_budget(kits_tiny: Path):
    cases = discover(kits_tiny).labelled
    plan = plan_default(cases, foreground=None, max_minutes=2.0, device=torch.device("cpu"))
    c = plan.config
    lo, hi = c.preprocess.window
    assert lo < c.preprocess.mean < hi and 120 < c.preprocess.mean < 240  # organ ~180 HU
    assert c.preprocess.mode == "spacing" and all(s > 0 for s in c.preprocess.spacing)
    assert c.model.options == {"base_channels": 8}
    assert all(p % 16 == 0 for p in c.train.patch_size)
    assert c.train.max_minutes == 2.0 and c.train.epochs >= 1 and c.train.steps_per_epoch >= 25
    assert plan.voxels_per_second > 0
