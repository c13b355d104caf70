"""Segmentation metrics as pure functions over binary masks or their confusion counts.

Overlap metrics (Dice, IoU, precision, recall) are computed from `ConfusionCounts`, so a
dataset-level ("global") score is the metric of the summed counts; under DDP the counts are
summed across ranks, never the per-rank scores averaged.

HD95 and ASSD follow MONAI's definitions (``compute_hausdorff_distance``,
``compute_average_surface_distance``):

- The surface of a mask is its voxels that have a 6-connected background neighbour
  (``mask & ~binary_erosion(mask)``); the distance between two surface voxels is the
  Euclidean distance of their centres in millimetres, using the (anisotropic) spacing.
- d(P->G): for every surface voxel of the prediction, the distance to the nearest surface
  voxel of the ground truth; d(G->P) likewise.
- HD95 = max(p95(d(P->G)), p95(d(G->P))): the larger of the two *directed* 95th percentiles
  (linear interpolation, as ``np.percentile`` / ``torch.quantile``), not the 95th percentile
  of the pooled distances.
- ASSD = mean of d(P->G) and d(G->P) pooled (each surface voxel counts once).

Surface Dice (NSD) follows the published definition instead (`SURFACE_DICE_DEFINITION`):
Nikolov et al., "Clinically applicable segmentation of head and neck anatomy for
radiotherapy" (2018/2021), as implemented by DeepMind's ``surface-distance``
(``compute_surface_distances`` + ``compute_surface_dice_at_tolerance``) and by MONAI's
``compute_surface_dice(use_subvoxels=True)``:

- Every point of the voxel-*corner* grid is surrounded by a 2x2x2 block of voxels. Where the
  block holds both foreground and background, marching cubes on it (the voxel centres as the
  cube's corners, cut at the midpoints of its edges) gives a small piece of surface, a
  surface element ("surfel") at that corner point. Its area in mm^2 follows from the spacing:
  e.g. a flat piece facing the 5 mm axis of a 0.78 x 0.78 x 5 mm grid is 0.78 * 0.78 mm^2,
  one facing an in-plane axis 0.78 * 5 mm^2.
- d(P->G): for every surfel of the prediction, the distance (mm) from its corner point to the
  nearest surfel corner point of the ground truth; d(G->P) likewise.
- Surface Dice at tolerance t = (area of P's surfels with d(P->G) within t + area of G's
  surfels with d(G->P) within t) / (area of P's surface + area of G's surface).
- "Within t" means d <= t * (1 + 1e-6): a distance exactly at the tolerance counts, also when
  the spacing is a decimal such as 0.2 mm and 5 * 0.2 becomes 1.0000000000000002.

This is not the share of surface *voxels* within t (MONAI's default, without sub-voxels,
and this module's former definition): on thick slices the two differ a lot, e.g. 0.487
(voxels) vs 0.752 (published) at 1 mm for a 3 x 8 x 8-voxel box moved by one slice at
5 x 0.78 x 0.78 mm (tests/test_metrics.py). Surface Dice is defined here for 3D masks only.

Empty masks (MONAI gives NaN or inf here; we pin the values):

- both empty: Dice = IoU = precision = recall = 1, HD95 = ASSD = 0, surface Dice = 1.
- exactly one empty: Dice = IoU = surface Dice = 0, precision = recall = 0 (a 0/0 ratio
  counts as perfect only when both masks are empty), HD95 = ASSD = inf. JSON has no inf,
  so `voxseg evaluate` writes it as null and says so in the file.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

Spacing = tuple[float, float, float]
DEFAULT_TOLERANCES_MM = (1.0, 2.0)
TOLERANCE_RTOL = 1e-6
"""A distance d is within tolerance t when d <= t * (1 + TOLERANCE_RTOL)."""
SURFACE_DICE_DEFINITION = (
    "normalised surface Dice of Nikolov et al. (2021), as DeepMind's surface-distance and "
    "MONAI compute_surface_dice(use_subvoxels=True): surface elements on the voxel-corner "
    "grid (marching cubes on each 2x2x2 block of voxels) weighted by their area in mm^2 for "
    "the spacing; (pred surface area within t of the gt surface + gt surface area within t "
    "of the pred surface) / (pred area + gt area); distances between surface-element corner "
    "points, d <= t*(1+1e-6) counts as within t"
)


@dataclass(frozen=True)
class ConfusionCounts:
    """Voxel counts of one binary prediction against its ground truth."""

    tp: int
    fp: int
    fn: int
    tn: int

    @classmethod
    def from_masks(cls, pred: np.ndarray, gt: np.ndarray) -> ConfusionCounts:
        pred, gt = _as_masks(pred, gt)
        tp = int(np.count_nonzero(pred & gt))
        fp = int(np.count_nonzero(pred)) - tp
        fn = int(np.count_nonzero(gt)) - tp
        return cls(tp=tp, fp=fp, fn=fn, tn=int(pred.size) - tp - fp - fn)

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )

    @property
    def both_empty(self) -> bool:
        return self.tp + self.fp + self.fn == 0


def _ratio(num: int, den: int, c: ConfusionCounts) -> float:
    if den == 0:  # 0/0: perfect when there was nothing to find and nothing was found
        return 1.0 if c.both_empty else 0.0
    return num / den


def dice(c: ConfusionCounts) -> float:
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, c)


def iou(c: ConfusionCounts) -> float:
    return _ratio(c.tp, c.tp + c.fp + c.fn, c)


def precision(c: ConfusionCounts) -> float:
    return _ratio(c.tp, c.tp + c.fp, c)


def recall(c: ConfusionCounts) -> float:
    return _ratio(c.tp, c.tp + c.fn, c)


def _as_masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    return pred, gt


@dataclass(frozen=True)
class SurfaceMetrics:
    hd95: float
    """mm; max of the two directed 95th percentiles; inf when exactly one mask is empty."""
    assd: float
    """mm; mean of the pooled surface distances; inf when exactly one mask is empty."""
    surface_dice: dict[float, float]
    """Tolerance in mm -> surface Dice (NSD): share of both surfaces' area within it."""


def crop_to_union(
    pred: np.ndarray, gt: np.ndarray, margin: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, padded with `margin` background.

    Outside the box both masks are background, so surfaces and distances are unchanged; the
    pad makes the erosion (and the 2x2x2 blocks of the corner grid) see that background
    explicitly. Empty union -> two empty arrays.
    """
    union = pred | gt
    if not union.any():
        return np.zeros((0,) * pred.ndim, bool), np.zeros((0,) * pred.ndim, bool)
    box = []
    for axis in range(pred.ndim):
        hits = np.flatnonzero(union.any(axis=tuple(a for a in range(pred.ndim) if a != axis)))
        box.append(slice(hits[0], hits[-1] + 1))
    box = tuple(box)
    return np.pad(pred[box], margin), np.pad(gt[box], margin)


def _surface_points(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Centres (mm, array order) of the voxels with a 6-connected background neighbour."""
    surface = mask & ~binary_erosion(mask)
    return np.argwhere(surface) * np.asarray(spacing, dtype=np.float64)


def _nearest(points: np.ndarray, targets: np.ndarray, upper_bound: float = math.inf) -> np.ndarray:
    # A k-d tree over surface points only: memory scales with the surface, not the volume.
    # Points with no target within `upper_bound` get inf (the search can stop early).
    return cKDTree(targets).query(points, k=1, distance_upper_bound=upper_bound)[0]


# --- Surface elements on the voxel-corner grid (surface Dice) ------------------------------
#
# A corner point of the voxel grid is shared by a 2x2x2 block of voxels. Its neighbour code
# has bit 4a + 2b + c set when the block's voxel at offset (a, b, c) in {0, 1}^3 is foreground
# (a along array axis 0, c along axis 2); `_BLOCK[bit]` is that offset. Codes 0 and 255 (all
# background, all foreground) carry no surface. For every other code, the marching-cubes piece
# of surface is built once on a unit cube whose corners are the block's voxel centres, and its
# triangles are kept as area vectors (half the cross product of two sides: normal to the
# triangle, as long as its area). Stretching the cube to the spacing (s0, s1, s2) scales an
# area vector (n0, n1, n2) to (n0*s1*s2, n1*s0*s2, n2*s0*s1), so the table of areas for any
# spacing is a weighted norm of these vectors.
#
# The construction gives the published lookup table (DeepMind's surface-distance, which MONAI
# copies) for all 256 codes at any spacing; tests/test_metrics.py checks it against MONAI's:
# - The triangles wrap the corners of the smaller phase (foreground or background; at 4:4 the
#   foreground), one closed polygon per edge-connected group of those corners. Where a cube
#   face has foreground on one diagonal and background on the other (the ambiguous case of
#   marching cubes), this keeps the minority's corners apart; a code and its complement get
#   the same piece.
# - A polygon's vertices are the midpoints of the cube edges that leave the group, in the
#   order in which they go around it (consecutive vertices lie on a common cube face).
# - A polygon of 5 or 6 vertices may be non-planar, and then its area depends on how it is cut
#   into triangles; the published table's cut is one of largest total area on the unit cube
#   (cuts tied there stay tied at every spacing: their area vectors are parallel). Triangles,
#   the quadrilaterals and the hexagon around a corner with its 3 neighbours are planar.

_BLOCK = tuple(itertools.product((0, 1), repeat=3))
_CUBE_EDGES = tuple((u, v) for u in range(8) for v in range(u + 1, 8) if bin(u ^ v).count("1") == 1)


def _edge_groups(corners: set[int]) -> list[set[int]]:
    """The corners split into groups connected along cube edges."""
    groups, left = [], set(corners)
    while left:
        group, todo = set(), [left.pop()]
        while todo:
            u = todo.pop()
            group.add(u)
            for v in (u ^ 1, u ^ 2, u ^ 4):
                if v in left:
                    left.discard(v)
                    todo.append(v)
        groups.append(group)
    return groups


def _polygon(group: set[int]) -> list[np.ndarray]:
    """Midpoints (unit cube) of the edges leaving `group`, in order around the group."""
    leaving = [e for e in _CUBE_EDGES if (e[0] in group) != (e[1] in group)]

    def shared_face(e: tuple[int, int], f: tuple[int, int]) -> bool:
        # The edges' four endpoints lie on one cube face: they agree in some coordinate.
        agree = ~(e[0] ^ e[1]) & ~(f[0] ^ f[1]) & ~(e[0] ^ f[0]) & 7
        return agree != 0

    ring = [leaving[0]]
    while len(ring) < len(leaving):
        nxt = [f for f in leaving if f not in ring and shared_face(ring[-1], f)]
        ring.append(nxt[0])
    assert shared_face(ring[-1], ring[0]), "the edges leaving a group form one closed ring"
    return [(np.asarray(_BLOCK[u]) + np.asarray(_BLOCK[v])) / 2.0 for u, v in ring]


def _triangulations(ring: list[int]):
    """Every split into triangles (index triples) of the polygon with vertices `ring` in order."""
    if len(ring) < 3:
        yield []
        return
    first, last = ring[0], ring[-1]
    for k in range(1, len(ring) - 1):
        for left in _triangulations(ring[: k + 1]):
            for right in _triangulations(ring[k:]):
                yield [*left, *right, (first, ring[k], last)]


def _area_vectors(points: list[np.ndarray]) -> list[np.ndarray]:
    """Area vectors of the largest-area split of the polygon into triangles (unit cube)."""
    best, best_area = [], -1.0
    for split in _triangulations(list(range(len(points)))):
        vectors = [np.cross(points[b] - points[a], points[c] - points[a]) / 2 for a, b, c in split]
        area = sum(float(np.linalg.norm(v)) for v in vectors)
        if area > best_area + 1e-9:  # the first of equal splits; their areas agree anyway
            best, best_area = vectors, area
    return best


@functools.cache
def _unit_area_vectors() -> np.ndarray:
    """(256, 4, 3): area vectors of each code's triangles on the unit cube, zero-padded."""
    table = np.zeros((256, 4, 3))
    for code in range(1, 255):
        foreground = {bit for bit in range(8) if code >> bit & 1}
        side = foreground if len(foreground) <= 4 else set(range(8)) - foreground
        vectors = [v for group in _edge_groups(side) for v in _area_vectors(_polygon(group))]
        table[code, : len(vectors)] = vectors
    return table


def surfel_area_table(spacing: Sequence[float]) -> np.ndarray:
    """Area (mm^2) of the surface element of each of the 256 neighbour codes at `spacing`."""
    s0, s1, s2 = (float(s) for s in spacing)
    scaled = _unit_area_vectors() * np.array([s1 * s2, s0 * s2, s0 * s1])
    return np.linalg.norm(scaled, axis=-1).sum(axis=-1)


def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Code of every corner point between the voxels of `mask` (shape minus one per axis).

    The mask must have a background margin, as `crop_to_union` leaves it, so that the corner
    points outside the array would all have code 0.
    """
    n0, n1, n2 = (n - 1 for n in mask.shape)
    codes = np.zeros((n0, n1, n2), np.uint8)
    for bit, (a, b, c) in enumerate(_BLOCK):
        codes |= mask[a : a + n0, b : b + n1, c : c + n2].astype(np.uint8) << bit
    return codes


def surface_area(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Area (mm^2) of a 3D mask's surface as surface Dice weighs it: the sum of its surfels."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return 0.0
    cropped, _ = crop_to_union(mask, mask)
    return float(surfel_area_table(spacing)[_neighbour_codes(cropped)].sum())


def _surfels(
    codes: np.ndarray,
    other_codes: np.ndarray,
    areas: np.ndarray,
    spacing: Sequence[float],
    bound: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Areas (mm^2) of one mask's surfels and their distances (mm) to the other's surfels.

    `codes`/`other_codes` are the two masks' neighbour codes on the same corner grid. A
    distance beyond `bound` may come back as inf.
    """
    mine, theirs = (codes != 0) & (codes != 255), (other_codes != 0) & (other_codes != 255)
    where = np.nonzero(mine)
    area = areas[codes[where]]
    distance = np.zeros(len(area))
    # A surfel at a corner point where the other mask has one too is at distance 0 (often
    # most of them); only the others need the k-d tree.
    away = ~theirs[where]
    if away.any():
        scale = np.asarray(spacing, dtype=np.float64)
        points = np.stack([w[away] for w in where], axis=-1) * scale
        distance[away] = _nearest(points, np.argwhere(theirs) * scale, bound)
    return area, distance


def _within(distances: np.ndarray, tolerance: float) -> np.ndarray:
    """d <= t, with a relative epsilon so that a distance at the tolerance counts."""
    return distances <= tolerance * (1.0 + TOLERANCE_RTOL)


def _surface_dice(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float], tolerances: Sequence[float]
) -> dict[float, float]:
    """Tolerance (mm) -> surface Dice (NSD) as published (see the module docstring).

    Both masks non-empty, 3D, and with a background margin (as `crop_to_union` leaves them).
    """
    areas = surfel_area_table(spacing)
    p_codes, g_codes = _neighbour_codes(pred), _neighbour_codes(gt)
    # Beyond the largest tolerance nothing counts, so the tree may stop there (inf); the
    # bound sits a little above it so that its own (strict) comparison never decides.
    bound = max((float(t) for t in tolerances), default=0.0) * (1 + 2 * TOLERANCE_RTOL) + 1e-9
    p_area, d_pg = _surfels(p_codes, g_codes, areas, spacing, bound)
    g_area, d_gp = _surfels(g_codes, p_codes, areas, spacing, bound)
    total = float(p_area.sum() + g_area.sum())
    return {
        float(t): float((p_area[_within(d_pg, t)].sum() + g_area[_within(d_gp, t)].sum()) / total)
        for t in tolerances
    }


def surface_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float],
    tolerances: Sequence[float] = DEFAULT_TOLERANCES_MM,
) -> SurfaceMetrics:
    """HD95, ASSD and surface Dice (definitions in the module docstring); spacing in array order."""
    pred, gt = _as_masks(pred, gt)
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}D mask")
    if pred.ndim != 3:
        raise ValueError(f"surface metrics need 3D masks, got {pred.ndim}D")
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not (has_pred or has_gt):
        return SurfaceMetrics(0.0, 0.0, {float(t): 1.0 for t in tolerances})
    if not (has_pred and has_gt):
        return SurfaceMetrics(math.inf, math.inf, {float(t): 0.0 for t in tolerances})
    pred, gt = crop_to_union(pred, gt)
    p_pts, g_pts = _surface_points(pred, spacing), _surface_points(gt, spacing)
    d_pg, d_gp = _nearest(p_pts, g_pts), _nearest(g_pts, p_pts)
    pooled = np.concatenate([d_pg, d_gp])
    return SurfaceMetrics(
        hd95=float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95))),
        assd=float(pooled.mean()),
        surface_dice=_surface_dice(pred, gt, spacing, tolerances),
    )


@dataclass(frozen=True)
class VolumeDifference:
    pred_ml: float
    gt_ml: float
    diff_ml: float
    """pred - gt."""
    relative: float
    """(pred - gt) / gt; 0 when both are empty, inf when only the ground truth is empty."""


def volume_difference(
    pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> VolumeDifference:
    pred, gt = _as_masks(pred, gt)
    voxel_ml = float(np.prod(spacing)) / 1000.0  # mm^3 -> mL
    pred_ml = int(np.count_nonzero(pred)) * voxel_ml
    gt_ml = int(np.count_nonzero(gt)) * voxel_ml
    diff = pred_ml - gt_ml
    if gt_ml == 0:
        return VolumeDifference(pred_ml, gt_ml, diff, 0.0 if pred_ml == 0 else math.inf)
    return VolumeDifference(pred_ml, gt_ml, diff, diff / gt_ml)


@dataclass(frozen=True)
class CaseMetrics:
    """Every metric of one case; distances in mm, volumes in mL."""

    case_id: str
    dice: float
    iou: float
    precision: float
    recall: float
    hd95_mm: float
    assd_mm: float
    surface_dice_1mm: float
    surface_dice_2mm: float
    volume_pred_ml: float
    volume_gt_ml: float
    volume_diff_ml: float


def case_metrics(
    case_id: str, pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]
) -> CaseMetrics:
    pred, gt = _as_masks(pred, gt)  # once, not in each metric
    counts = ConfusionCounts.from_masks(pred, gt)
    surface = surface_metrics(pred, gt, spacing, tolerances=(1.0, 2.0))
    volume = volume_difference(pred, gt, spacing)
    return CaseMetrics(
        case_id=case_id,
        dice=dice(counts),
        iou=iou(counts),
        precision=precision(counts),
        recall=recall(counts),
        hd95_mm=surface.hd95,
        assd_mm=surface.assd,
        surface_dice_1mm=surface.surface_dice[1.0],
        surface_dice_2mm=surface.surface_dice[2.0],
        volume_pred_ml=volume.pred_ml,
        volume_gt_ml=volume.gt_ml,
        volume_diff_ml=volume.diff_ml,
    )
