"""The body around a real label map: a torso fitted to its kidneys, as 2D axial slabs.

The background of `paint_ct` is a stack of 2D maps broadcast along the superior axis, one per
~4 mm slab, so a 600x512x512 label takes seconds; only the label's box is painted in 3D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from voxseg.synth.shapes import ellipse, grid_mm
from voxseg.synth.tissue import DISC, RIB, VERTEBRA_MM
from voxseg.synth.torso import Torso, bowel, discs, organs, paint_loops, rib_rows, torso_slice


@dataclass(frozen=True)
class Layout:
    """Where the painted anatomy goes, in canonical mm from voxel (0, 0, 0)."""

    torso: Torso
    right: float
    """S level of the right kidney (the liver sits above it)."""
    left: float
    """S level of the left kidney (the spleen sits above it)."""


def fit_layout(label_c: np.ndarray, spacing, rng: np.random.Generator) -> Layout:
    """Fit a torso around the kidneys of a canonical label, from a ~4 mm subsample."""
    step = [max(1, round(4.0 / d)) for d in spacing]
    small = np.ascontiguousarray(label_c[:: step[0], :: step[1], :: step[2]])
    mm = [d * f for d, f in zip(spacing, step, strict=True)]
    fov = [n * d for n, d in zip(label_c.shape, spacing, strict=True)]
    centre = [f / 2 for f in fov]
    fg = small != 0
    if not fg.any():
        kid_centre = np.array([centre[0], centre[1] + 40, centre[2]])
        fg_pts = kid_centre[None]
        sides = [kid_centre, kid_centre]
    else:
        fg_pts = np.argwhere(fg) * mm
        kidney = np.argwhere(fg & (small != 2)) * mm
        kid_pts = kidney if len(kidney) else fg_pts
        parts, count = ndimage.label(fg)
        sizes = np.bincount(parts.ravel())[1:]
        order = np.argsort(sizes)[::-1]
        sides = [kid_pts.mean(0)] * 2
        if count >= 2 and sizes[order[1]] >= 0.15 * sizes[order[0]]:
            a, b = (np.argwhere(parts == k + 1).mean(0) * mm for k in order[:2])
            if abs(a[2] - b[2]) > 80:  # two kidneys, one each side of the spine
                sides = sorted([a, b], key=lambda c: c[2])
        kid_centre = kid_pts.mean(0)
    midline = (sides[0][2] + sides[1][2]) / 2 if sides[0][2] != sides[1][2] else centre[2]
    vp = kid_centre[1] - 8
    lo, hi = fg_pts.min(0), fg_pts.max(0)

    rl = max(min(165.0, 0.47 * fov[2]), abs(lo[2] - midline) + 30, abs(hi[2] - midline) + 30)
    back = max(vp + 85, hi[1] + 30)  # posterior skin
    rp = max(min(0.72 * rl, 0.47 * fov[1]), (back - lo[1] + 30) / 2)
    torso = Torso(
        centre=(back - rp, midline), radii=(rp, rl), fat=rng.uniform(12, 30), spine=(vp, midline)
    )
    return Layout(torso=torso, right=float(sides[0][0]), left=float(sides[1][0]))


def slabs(shape, spacing, layout: Layout, rng: np.random.Generator):
    """2D background maps (unblurred) and, per canonical S index, which map it shows.

    One map per slab of ~4 mm: each is the cross-section of the same 3D anatomy (organs,
    bowel loops, discs, ribs) at the slab's centre, so sagittal and coronal views stay smooth.
    """
    torso = layout.torso
    (cp, cl), (rp, rl), (vp, _) = torso.centre, torso.radii, torso.spine
    _, p, lr = grid_mm((1, *shape[1:]), (1.0, *spacing[1:]), False)
    sl = torso_slice(p[0], lr[0], torso)
    fov_s = shape[0] * spacing[0]
    rows = max(1, round(max(4.0, fov_s / 128) / spacing[0]))  # at most ~128 maps
    which = np.arange(shape[0]) // rows
    disc_phase, rib_phase = rng.uniform(0, VERTEBRA_MM), rng.uniform(0, 30)
    level = (layout.left + layout.right) / 2
    box = ((0.0, fov_s), (cp - 0.85 * rp, vp - 30), (cl - 0.75 * rl, cl + 0.75 * rl))
    area = (box[1][1] - box[1][0]) * (box[2][1] - box[2][0])
    loops = bowel(box, int(fov_s * area / 30000 * rng.uniform(0.8, 1.2)), rng)
    loop_s = np.array([loop.centre[0] for loop in loops])
    loop_r = np.array([loop.radius for loop in loops])
    solid_organs = organs(torso, layout.right, layout.left)
    maps = np.empty((which[-1] + 1, *shape[1:]), dtype=np.float32)
    for k in range(len(maps)):
        s = (k * rows + (min((k + 1) * rows, shape[0]) - 1)) / 2 * spacing[0]
        hu = sl.hu.copy()
        free = sl.inner & ~sl.occupied
        for value, centre, size in solid_organs:
            shrink = 1 - ((s - centre[0]) / size[0]) ** 2  # the ellipsoid's cross-section
            if shrink > 0:
                radii = (size[1] * math.sqrt(shrink), size[2] * math.sqrt(shrink))
                organ = free & (ellipse((p[0], lr[0]), centre[1:], radii) <= 1)
                hu[organ] = value
                free &= ~organ
        if discs(s, disc_phase):
            hu[sl.vertebra] = DISC
        if rib_rows(s, rib_phase, level):
            hu[sl.ribs] = RIB
        here = [loops[i] for i in np.flatnonzero(np.abs(loop_s - s) < loop_r)]
        coords = (np.full((1, 1, 1), s, dtype=np.float32), p, lr)
        paint_loops(hu[None], coords, free[None], here, 3.0)
        maps[k] = hu
    return maps, which
