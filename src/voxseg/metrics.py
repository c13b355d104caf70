"""Segmentation metrics as pure functions over binary masks or their confusion counts.

Overlap metrics (Dice, IoU, precision, recall) are computed from `ConfusionCounts`, so a
dataset-level ("global") score is the metric of the summed counts; under DDP the counts are
summed across ranks, never the per-rank scores averaged.

Surface metrics follow MONAI's definitions (``compute_hausdorff_distance``,
``compute_average_surface_distance``, ``compute_surface_dice`` without sub-voxels), computed
once here instead of three times:

- The surface of a mask is its voxels that have a 6-connected background neighbour
  (``mask & ~binary_erosion(mask)``); the distance between two surface voxels is the
  Euclidean distance of their centres in millimetres, using the (anisotropic) spacing.
- d(P->G): for every surface voxel of the prediction, the distance to the nearest surface
  voxel of the ground truth; d(G->P) likewise.
- HD95 = max(p95(d(P->G)), p95(d(G->P))): the larger of the two *directed* 95th percentiles
  (linear interpolation, as ``np.percentile`` / ``torch.quantile``), not the 95th percentile
  of the pooled distances.
- ASSD = mean of d(P->G) and d(G->P) pooled (each surface voxel counts once).
- Surface Dice at tolerance t = (#{d(P->G) <= t} + #{d(G->P) <= t}) / (|S_P| + |S_G|).

Empty masks (MONAI gives NaN or inf here; we pin the values):

- both empty: Dice = IoU = precision = recall = 1, HD95 = ASSD = 0, surface Dice = 1.
- exactly one empty: Dice = IoU = surface Dice = 0, precision = recall = 0 (a 0/0 ratio
  counts as perfect only when both masks are empty), HD95 = ASSD = inf. JSON has no inf,
  so `voxseg evaluate` writes it as null and says so in the file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

Spacing = tuple[float, float, float]
DEFAULT_TOLERANCES_MM = (1.0, 2.0)


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
    """Tolerance in mm -> fraction of surface voxels within it (both directions pooled)."""


def crop_to_union(
    pred: np.ndarray, gt: np.ndarray, margin: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, padded with `margin` background.

    Outside the box both masks are background, so surfaces and distances are unchanged; the
    pad makes the erosion see that background explicitly. Empty union -> two empty arrays.
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


def _nearest(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    # A k-d tree over surface points only: memory scales with the surface, not the volume.
    return cKDTree(targets).query(points, k=1)[0]


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
        surface_dice={float(t): float(np.mean(pooled <= t)) for t in tolerances},
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
