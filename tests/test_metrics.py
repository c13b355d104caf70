"""Metrics on hand-built masks, with the answers worked out on paper in the comments."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voxseg.metrics import (
    ConfusionCounts,
    case_metrics,
    crop_to_union,
    dice,
    iou,
    precision,
    recall,
    surface_metrics,
    volume_difference,
)

ANISO = (2.0, 1.0, 1.0)  # array order: axis 0 is 2 mm, axes 1 and 2 are 1 mm


def cube(shift: tuple[int, int, int] = (0, 0, 0), size: int = 20, side: int = 10) -> np.ndarray:
    """A side^3 cube of ones at [5, 15) per axis in a size^3 volume, moved by `shift` voxels."""
    mask = np.zeros((size,) * 3, dtype=bool)
    mask[tuple(slice(5 + s, 5 + side + s) for s in shift)] = True
    return mask


# Ground truth: the cube at [5, 15)^3. Prediction: moved one voxel along axis 0, [6, 16).
# Overlap: 9 slices of 10 x 10 -> tp = 900, fp = 100 (slice 15), fn = 100 (slice 5).
#   Dice = 2*900 / (2*900 + 100 + 100) = 0.9; IoU = 900 / 1100 = 9/11;
#   precision = recall = 900 / 1000 = 0.9.
# Surfaces (voxels with a 6-neighbour outside): 10^3 - 8^3 = 488 per cube.
# Directed distances pred -> gt (mm, axis 0 is 2 mm):
#   - the 100 voxels of pred's face at axis-0 index 15: nearest gt surface is index 14 -> 2 mm;
#   - pred's face at index 6, inner 8 x 8 = 64 voxels: gt's face at index 5 is 2 mm away, gt's
#     side faces are (distance to the side) x 1 mm away: the outer ring of 8^2 - 6^2 = 28
#     voxels is 1 mm from a side, the inner 36 are >= 2 mm from one -> 28 at 1 mm, 36 at 2 mm;
#   - the other 488 - 164 = 324 lie on gt's side faces -> 0 mm.
#   Sorted: 324 zeros, 28 ones, 136 twos. p95 (linear) sits at 0.95 * 487 = 462.65, between
#   items 462 and 463, both in the twos (they start at 352) -> 2.0 mm.
#   gt -> pred is the mirror image (flip axis 0 swaps the cubes) -> the same distances.
# HD95 = max(2.0, 2.0) = 2.0 mm (pooling both directions would give 2.0 too).
# ASSD = (28 * 1 + 136 * 2) * 2 / (488 * 2) = 300 / 488 = 75/122 mm.
# Surface Dice at 1 mm = (324 + 28) * 2 / (488 * 2) = 352/488 = 44/61; at 2 mm every distance
# is <= 2 -> 1.0.
def test_shift_along_2mm_axis():
    gt, pred = cube(), cube((1, 0, 0))
    c = ConfusionCounts.from_masks(pred, gt)
    assert c == ConfusionCounts(tp=900, fp=100, fn=100, tn=20**3 - 1100)
    assert dice(c) == pytest.approx(0.9)
    assert iou(c) == pytest.approx(9 / 11)
    assert precision(c) == pytest.approx(0.9)
    assert recall(c) == pytest.approx(0.9)
    s = surface_metrics(pred, gt, ANISO)
    assert s.hd95 == pytest.approx(2.0)
    assert s.assd == pytest.approx(75 / 122)
    assert s.surface_dice == pytest.approx({1.0: 44 / 61, 2.0: 1.0})


# Moved one voxel along axis 2 (1 mm): pred's far face (100 voxels) is 1 mm from gt's; the
# inner 64 of its near face are 1 mm from gt's near face (sides are >= 1 mm too, axis 0 is
# 2 mm per voxel); the other 324 are 0. p95 item 462.65 > 324 -> HD95 = 1.0 mm.
# ASSD = 164 / 488 = 41/122 mm; every distance <= 1 -> surface Dice 1 at 1 mm and 2 mm.
def test_shift_along_1mm_axis():
    s = surface_metrics(cube((0, 0, 1)), cube(), ANISO)
    assert s.hd95 == pytest.approx(1.0)
    assert s.assd == pytest.approx(41 / 122)
    assert s.surface_dice == pytest.approx({1.0: 1.0, 2.0: 1.0})


def test_identical_masks_are_perfect():
    m = case_metrics("a", cube(), cube(), ANISO)
    assert (m.dice, m.iou, m.precision, m.recall) == (1.0, 1.0, 1.0, 1.0)
    assert (m.hd95_mm, m.assd_mm, m.surface_dice_1mm, m.surface_dice_2mm) == (0, 0, 1, 1)


def test_both_empty():
    empty = np.zeros((8, 8, 8), bool)
    m = case_metrics("e", empty, empty, ANISO)
    assert (m.dice, m.iou, m.precision, m.recall) == (1.0, 1.0, 1.0, 1.0)
    assert (m.hd95_mm, m.assd_mm) == (0.0, 0.0)
    assert (m.surface_dice_1mm, m.surface_dice_2mm) == (1.0, 1.0)
    assert (m.volume_pred_ml, m.volume_gt_ml, m.volume_diff_ml) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize("pred_empty", [True, False])
def test_exactly_one_empty(pred_empty):
    empty, full = np.zeros((20, 20, 20), bool), cube()
    pred, gt = (empty, full) if pred_empty else (full, empty)
    m = case_metrics("one", pred, gt, ANISO)
    assert (m.dice, m.iou, m.precision, m.recall) == (0.0, 0.0, 0.0, 0.0)
    assert math.isinf(m.hd95_mm) and math.isinf(m.assd_mm)
    assert (m.surface_dice_1mm, m.surface_dice_2mm) == (0.0, 0.0)


def test_counts_add_like_concatenated_volumes():
    rng = np.random.default_rng(0)
    p1, g1, p2, g2 = (rng.random((6, 7, 8)) > 0.5 for _ in range(4))
    summed = ConfusionCounts.from_masks(p1, g1) + ConfusionCounts.from_masks(p2, g2)
    joined = ConfusionCounts.from_masks(np.concatenate([p1, p2]), np.concatenate([g1, g2]))
    assert summed == joined
    assert dice(summed) == pytest.approx(dice(joined))


def test_volume_difference():
    # pred 1000 voxels, gt 900 voxels (a 9 x 10 x 10 box), voxel 2 x 1 x 1 mm = 0.002 mL.
    # pred 2.0 mL, gt 1.8 mL, diff 0.2 mL, relative 0.2 / 1.8 = 1/9.
    gt = cube()
    gt[5] = False
    v = volume_difference(cube(), gt, ANISO)
    assert (v.pred_ml, v.gt_ml) == pytest.approx((2.0, 1.8))
    assert v.diff_ml == pytest.approx(0.2)
    assert v.relative == pytest.approx(1 / 9)
    assert math.isinf(volume_difference(cube(), np.zeros_like(gt), ANISO).relative)


def test_tolerance_is_inclusive():
    # Shift of one 2 mm voxel: every distance is 0 or 1 or exactly 2 -> at 2 mm all count.
    s = surface_metrics(cube((1, 0, 0)), cube(), ANISO, tolerances=(1.99, 2.0))
    assert s.surface_dice[1.99] == pytest.approx(44 / 61)
    assert s.surface_dice[2.0] == 1.0


def test_crop_does_not_change_surface_metrics():
    small_pred, small_gt = cube((1, 0, 0)), cube()
    big_pred, big_gt = (np.pad(m, ((3, 9), (0, 11), (7, 2))) for m in (small_pred, small_gt))
    assert surface_metrics(big_pred, big_gt, ANISO) == surface_metrics(small_pred, small_gt, ANISO)
    cropped_pred, _ = crop_to_union(big_pred, big_gt)
    assert cropped_pred.shape == (11 + 2, 10 + 2, 10 + 2)  # union box + 1-voxel margin


def test_touching_the_volume_border():
    # Masks that reach the edge of the array still have a surface there.
    gt = np.zeros((6, 6, 6), bool)
    gt[:3] = True
    pred = np.zeros_like(gt)
    pred[:4] = True
    s = surface_metrics(pred, gt, (1.0, 1.0, 1.0))
    assert s.hd95 == pytest.approx(1.0)


def _blob(shape, centre, radii):
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) < 1


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
def test_agrees_with_monai():
    torch = pytest.importorskip("torch")
    from monai.metrics import (
        compute_average_surface_distance,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    shape, spacing = (16, 24, 20), (2.5, 0.8, 1.2)
    gt = _blob(shape, (8, 12, 10), (5, 8, 6))
    pred = _blob(shape, (7, 13, 9), (4.5, 9, 6)) | _blob(shape, (3, 3, 3), (1.5, 2, 2))

    def t(m):
        return torch.from_numpy(m[None, None].astype(np.float32))

    s = surface_metrics(pred, gt, spacing)
    hd = compute_hausdorff_distance(t(pred), t(gt), percentile=95, spacing=spacing)
    asd = compute_average_surface_distance(t(pred), t(gt), symmetric=True, spacing=spacing)
    nsd = compute_surface_dice(t(pred), t(gt), [1.0], spacing=spacing)
    assert s.hd95 == pytest.approx(float(hd), rel=1e-5)
    assert s.assd == pytest.approx(float(asd), rel=1e-5)
    assert s.surface_dice[1.0] == pytest.approx(float(nsd), rel=1e-5)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        ConfusionCounts.from_masks(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
