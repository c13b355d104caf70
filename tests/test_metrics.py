"""Metrics on hand-built masks, with the answers worked out on paper in the comments.

Surface Dice areas, by the kind of corner point a surfel sits on (spacing s0, s1, s2; see
`voxseg.metrics`): a flat piece facing axis 0 is s1*s2 mm^2 (likewise s0*s2, s0*s1 for axes 1
and 2); a box's edge along axis 0 is cut off by a 45-degree-in-voxels bevel, s0 long and
hypot(s1, s2)/2 wide; a box's corner is the triangle through the three half-edges of one
voxel, hypot(s1*s2, s0*s2, s0*s1)/8.
"""

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
    surface_area,
    surface_metrics,
    surfel_area_table,
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
# Surface Dice works on surfels at the corner points i, j, k = 0..10 of the gt cube:
#   cap insides (i = 0 or 10; j, k = 1..9): 2 x 81, 1 x 1 = 1 mm^2 each;
#   side insides (j or k = 0 or 10, the other two 1..9): 4 x 81, 2 x 1 = 2 mm^2 each;
#   edges along axis 0 (j, k in {0, 10}, i = 1..9): 4 x 9, 2 * hypot(1, 1)/2 = sqrt(2) each;
#   edges of the caps (i in {0, 10}, one of j, k in {0, 10}): 8 x 9, 1 * hypot(2, 1)/2 =
#   sqrt(5)/2 each; corners: 8, hypot(1, 2, 2)/8 = 3/8 each.
#   Area A = 162 + 648 + 36 sqrt(2) + 36 sqrt(5) + 3 = 813 + 36 sqrt(2) + 36 sqrt(5) mm^2.
# The prediction's corner points are i = 1..11. At i = 1..10 its sides and the rim of its
# bottom cap lie on gt surface points (0 mm). Its top cap with rim and corners (i = 11) is
# 2 mm from gt's top cap: 81 + 36 sqrt(5)/2 + 4 * 3/8 = 82.5 + 18 sqrt(5) mm^2 at 2 mm. Its
# bottom cap insides (i = 1) are min(m, 2) mm away, m = min(j, 10-j, k, 10-k) (1 mm steps
# to a gt side, 2 mm to gt's bottom cap): over 1 mm for j, k = 2..8, 49 x 1 mm^2.
# gt -> pred is the mirror image. Surface Dice at 1 mm = 1 - (131.5 + 18 sqrt(5)) / A
# = 0.8181 (the former voxel count gave 352/488 = 0.7213); at 2 mm everything counts -> 1.
SHIFT_2MM_NSD_1MM = 1 - (131.5 + 18 * math.sqrt(5)) / (813 + 36 * math.sqrt(2) + 36 * math.sqrt(5))


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
    assert s.surface_dice == pytest.approx({1.0: SHIFT_2MM_NSD_1MM, 2.0: 1.0})


# Moved one voxel along axis 2 (1 mm): pred's far face (100 voxels) is 1 mm from gt's; the
# inner 64 of its near face are 1 mm from gt's near face (sides are >= 1 mm too, axis 0 is
# 2 mm per voxel); the other 324 are 0. p95 item 462.65 > 324 -> HD95 = 1.0 mm.
# ASSD = 164 / 488 = 41/122 mm. Surface Dice: the prediction's surfels are on gt surface points
# (0 mm), or on its far cap 1 mm from gt's, or on its near cap, 1 mm from gt's near cap ->
# every distance <= 1 mm -> 1 at 1 mm and 2 mm (mirror image for gt -> pred).
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
    # Against the definition on the joined masks, not the counts compared above.
    p, g = np.concatenate([p1, p2]), np.concatenate([g1, g2])
    assert dice(summed) == pytest.approx(2 * (p & g).sum() / (p.sum() + g.sum()))


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
    # Shift of one 2 mm voxel: every surfel distance is 0 or 1 or exactly 2 -> at 2 mm all count.
    s = surface_metrics(cube((1, 0, 0)), cube(), ANISO, tolerances=(1.99, 2.0))
    assert s.surface_dice[1.99] == pytest.approx(SHIFT_2MM_NSD_1MM)
    assert s.surface_dice[2.0] == 1.0


# 0.2 mm written as a decimal is not 0.2: corner points 9 and 14 are 14 * 0.2 - 9 * 0.2 =
# 1.0000000000000002 mm apart, and NIfTI stores 0.2 as float32, 0.20000000298, so 5 voxels
# are 1.0000000149 mm. Both must count as within 1 mm (d <= t * (1 + 1e-6)).
# gt: 9 x 10 x 10 voxels (corner points i = 0..9, j, k = 0..10); pred: moved 5 voxels = 1 mm
# up axis 0 (i = 5..14). Every distance is at most 5 voxels (1 mm):
#   pred's top cap (i = 14, with rim and corners) is exactly 5 voxels from gt's (i = 9);
#   pred's sides at i = 10..13 are 1..4 voxels from gt's top rim; at i = 5..9 they lie on gt's
#   sides; pred's bottom cap (i = 5) is 4 voxels from gt's top cap (i = 9) or closer to a side.
#   gt -> pred mirrors it: only gt's bottom cap (i = 0) is exactly 5 voxels from pred's (i = 5).
# So surface Dice at 1 mm is 1, and at 0.99 mm it loses the two caps at exactly 1 mm.
# Areas in units of s^2 (all spacings s): a 10 x 10 cap with its rim and corners is
# 81 + 36 * sqrt(2)/2 + 4 * sqrt(3)/8 = 81 + 18 sqrt(2) + sqrt(3)/2; one box is 2 x 81 (caps)
# + 4 x 8 x 9 (sides) + (4 x 8 + 8 x 9) * sqrt(2)/2 (edges) + 8 * sqrt(3)/8 (corners)
# = 450 + 52 sqrt(2) + sqrt(3). Surface Dice at 0.99 mm = 1 - cap / box = 0.7957.
@pytest.mark.parametrize("spacing", [0.2, float(np.float32(0.2))], ids=["decimal", "float32"])
def test_distance_at_the_tolerance_counts(spacing):
    gt = np.zeros((26, 20, 20), bool)
    gt[5:14, 5:15, 5:15] = True
    pred = np.roll(gt, 5, axis=0)
    s = surface_metrics(pred, gt, (spacing,) * 3, tolerances=(0.99, 1.0))
    cap = 81 + 18 * math.sqrt(2) + math.sqrt(3) / 2
    box = 450 + 52 * math.sqrt(2) + math.sqrt(3)
    assert s.surface_dice[1.0] == 1.0
    assert s.surface_dice[0.99] == pytest.approx(1 - cap / box)


# KiTS-like: 5 mm slices along axis 0, 0.78 mm in plane.
KITS = (5.0, 0.78, 0.78)
S0, S = KITS[0], KITS[1]
FLAT_0 = S * S  # flat piece facing axis 0 (inside a cap)
FLAT_IN = S0 * S  # flat piece facing an in-plane axis (inside a side)
EDGE_0 = S0 * math.hypot(S, S) / 2  # bevel along an edge in the slice direction
EDGE_IN = S * math.hypot(S0, S) / 2  # bevel along an in-plane edge
CORNER = math.hypot(S * S, S0 * S, S0 * S) / 8


def test_surfel_areas_follow_the_spacing():
    # Spacing (1, 2, 3) mm. Code bit 4a + 2b + c is the voxel at offset (a, b, c).
    table = surfel_area_table((1.0, 2.0, 3.0))
    assert table[0] == table[255] == 0.0
    assert table[0b11110000] == pytest.approx(2 * 3)  # foreground at a = 1: faces axis 0
    assert table[0b11001100] == pytest.approx(1 * 3)  # b = 1: faces axis 1
    assert table[0b10101010] == pytest.approx(1 * 2)  # c = 1: faces axis 2
    # One voxel in the block: the triangle through its three half-edges (0.5, 0, 0),
    # (0, 1, 0), (0, 0, 1.5) mm; half the cross product: hypot(2*3, 1*3, 1*2)/8 = 7/8.
    assert table[0b00000001] == pytest.approx(7 / 8)
    assert table[0b11111110] == pytest.approx(7 / 8)  # the complement: the same piece
    # Two voxels along axis 2: a bevel 3 mm long and hypot(1, 2)/2 mm wide.
    assert table[0b00000011] == pytest.approx(3 * math.hypot(1, 2) / 2)


def test_single_voxel_surface():
    # A lone voxel is in the block of each of its 8 corner points, each carrying one corner
    # triangle: 8 * hypot(s1*s2, s0*s2, s0*s1)/8 (an octahedron, not the voxel's 6 faces).
    voxel = np.zeros((3, 3, 3), bool)
    voxel[1, 1, 1] = True
    assert surface_area(voxel, ANISO) == pytest.approx(math.hypot(1, 2, 2))  # 3 mm^2
    assert surface_area(voxel, (1.0, 2.0, 3.0)) == pytest.approx(math.hypot(6, 3, 2))  # 7 mm^2
    assert surface_area(voxel, KITS) == pytest.approx(8 * CORNER)


# gt: 3 slices x 8 x 8 voxels at 5 x 0.78 x 0.78 mm; pred: moved one slice (5 mm) along axis 0.
# gt's corner points: i = 0..3, j, k = 0..8. Its surfels:
#   cap insides (i in {0, 3}, j, k = 1..7): 2 x 49 x FLAT_0
#   side insides (j or k in {0, 8}, i = 1..2, the other 1..7): 4 x 14 x FLAT_IN
#   edges along axis 0 (j, k in {0, 8}, i = 1..2): 4 x 2 x EDGE_0
#   edges of the caps (i in {0, 3}, one of j, k in {0, 8}, the other 1..7): 8 x 7 x EDGE_IN
#   corners: 8 x CORNER
# pred's corner points are i = 1..4. Distances pred -> gt:
#   top cap with rim and corners (i = 4): 5 mm from gt's top cap -> never within 1 or 2 mm;
#     49 FLAT_0 + 28 EDGE_IN + 4 CORNER.
#   sides at i = 2..3 and the rim of the bottom cap (i = 1): on gt surface points -> 0.
#   bottom cap insides (i = 1): gt's nearest surface is a side, m = min(j, 8-j, k, 8-k)
#     steps of 0.78 mm away (gt's bottom cap is 5 mm away): within 1 mm for m = 1 only
#     (0.78 <= 1 < 1.56), so j, k = 2..6 (25 points) are not; within 2 mm for m <= 2
#     (1.56 <= 2 < 2.34), so j, k = 3..5 (9 points) are not.
# gt -> pred is the mirror image, so surface Dice = 1 - (lost area of one box) / (box area):
#   1 mm: 1 - (87.846 + 25 x 0.6084) / 416.155 = 0.7524
#   2 mm: 1 - (87.846 + 9 x 0.6084) / 416.155 = 0.7758
# The former voxel-count variant gave 0.487 and 0.564 here.
BOX_AREA = 98 * FLAT_0 + 56 * FLAT_IN + 8 * EDGE_0 + 56 * EDGE_IN + 8 * CORNER
BOX_TOP = 49 * FLAT_0 + 28 * EDGE_IN + 4 * CORNER


def kits_box() -> np.ndarray:
    mask = np.zeros((8, 12, 12), bool)
    mask[2:5, 2:10, 2:10] = True
    return mask


def test_box_surface_area_on_thick_slices():
    assert surface_area(kits_box(), KITS) == pytest.approx(BOX_AREA)


def test_one_slice_shift_on_thick_slices():
    gt = kits_box()
    pred = np.roll(gt, 1, axis=0)
    s = surface_metrics(pred, gt, KITS)
    assert s.surface_dice == pytest.approx(
        {
            1.0: 1 - (BOX_TOP + 25 * FLAT_0) / BOX_AREA,
            2.0: 1 - (BOX_TOP + 9 * FLAT_0) / BOX_AREA,
        }
    )
    assert s.surface_dice[1.0] == pytest.approx(0.7524, abs=1e-4)


def test_identical_and_far_apart_on_thick_slices():
    gt = kits_box()
    assert surface_metrics(gt, gt, KITS).surface_dice == {1.0: 1.0, 2.0: 1.0}
    # 3 voxels (2.34 mm) between the boxes in plane: every surfel is over 2 mm from the other.
    far = np.zeros((8, 12, 24), bool)
    far[2:5, 2:10, 2:10] = True
    moved = np.roll(far, 11, axis=2)
    assert surface_metrics(moved, far, KITS).surface_dice == {1.0: 0.0, 2.0: 0.0}


def test_surface_dice_needs_3d():
    with pytest.raises(ValueError, match="3D"):
        surface_metrics(np.ones((3, 3), bool), np.ones((3, 3), bool), (1.0, 1.0))


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
    assert s.hd95 == pytest.approx(float(hd), rel=1e-5)
    assert s.assd == pytest.approx(float(asd), rel=1e-5)
    # Surface Dice as published is MONAI's with sub-voxels (its default counts voxels).
    for tol in (1.0, 2.0):
        nsd = compute_surface_dice(t(pred), t(gt), [tol], spacing=spacing, use_subvoxels=True)
        assert s.surface_dice[tol] == pytest.approx(float(nsd), rel=1e-5)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), KITS, (0.3, 2.7, 1.1), (4.0, 0.5, 2.0)])
def test_area_table_is_the_published_one(spacing):
    # MONAI's copy of DeepMind's table; its code has bit 7 - (4a + 2b + c) where ours has
    # 4a + 2b + c (the voxel at offset (a, b, c)), so our code is its code bit-reversed.
    pytest.importorskip("torch")
    from monai.metrics.utils import create_table_neighbour_code_to_surface_area

    published = create_table_neighbour_code_to_surface_area(spacing)[0].double().numpy()
    reverse = [int(f"{code:08b}"[::-1], 2) for code in range(256)]
    assert surfel_area_table(spacing) == pytest.approx(published[reverse], rel=1e-6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        ConfusionCounts.from_masks(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
