"""Synthetic CT-like volumes (Hounsfield units) for the demo and the tests.

Two sources of anatomy:
- ``random_case``: a whole abdomen drawn from analytic shapes in the canonical layout
  (array axes run towards superior, posterior, left). Shapes are defined in *anatomical* mm
  (a real adult's sizes) and the whole body is shrunk to the field of view, so a 64^3 grid at
  1.6 mm still holds a complete torso; kidneys never get thinner than a few voxels.
- ``paint_ct``: an image painted around a real label map (e.g. KiTS19) in any orientation. The
  background is a stack of 2D axial slabs broadcast along the superior axis and only the label's
  bounding box is processed in 3D, so a 600x512x512 label takes seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from voxseg.errors import ConfigError, InputError, OutputExistsError
from voxseg.geometry import Geometry, Reorientation
from voxseg.progress import ProgressFn, Step, ignore

# Hounsfield units (portal-venous-phase-like contrast).
AIR = -1000.0
FAT = -100.0
SOFT = 40.0
VISCERAL_FAT = -80.0
MUSCLE = 55.0
LIVER = 60.0
SPLEEN = 105.0
BONE_RIM = 700.0
MARROW = 400.0
DISC = 90.0
CSF = 15.0
RIB = 600.0
AORTA = 200.0
IVC = 155.0
CORTEX = 180.0
MEDULLA = 120.0
SINUS = -60.0
GAS = -950.0
FLUID = 15.0
CONTRAST = 250.0
STOOL = -250.0
HU_RANGE = (-1024, 3071)

BLUR_MM = 0.9
"""Gaussian sigma in mm: the scanner's point spread, so edges are not voxel-sharp."""
VERTEBRA_MM = 35.0
"""Period of vertebra + disc along the superior axis."""
DISC_MM = 8.0


@dataclass(frozen=True)
class SynthCase:
    image: np.ndarray
    """int16 Hounsfield units, array order (canonical layout for ``random_case``)."""
    label: np.ndarray
    """uint8: 0 background, 1 kidney, 2 tumour (KiTS19 convention)."""
    geometry: Geometry


@dataclass(frozen=True)
class _Torso:
    """In-plane body layout in mm as (posterior, left) pairs; the same in every axial slice."""

    centre: tuple[float, float]
    radii: tuple[float, float]
    fat: float
    spine: tuple[float, float]
    """Centre of the vertebral body; muscles, vessels and canal sit at fixed offsets from it."""


@dataclass(frozen=True)
class _Slice:
    """One axial slice of the torso: HU values and the masks organs must respect."""

    hu: np.ndarray
    inner: np.ndarray
    """Inside the abdominal wall, where organs may go."""
    occupied: np.ndarray
    """Bone, vessels and muscle: organs (liver, bowel) stay out."""
    hard: np.ndarray
    """Bone and vessels: even kidneys and tumours stay out."""
    vertebra: np.ndarray
    ribs: np.ndarray


# ---------------------------------------------------------------- shapes


def _ellipse(coords, centre, radii) -> np.ndarray:
    """Normalised squared radius of an axis-aligned ellipse/ellipsoid (< 1 inside), broadcast."""
    return sum(((c - c0) / r) ** 2 for c, c0, r in zip(coords, centre, radii, strict=True))


def _superellipse(coords, centre, radii, power: float = 2.4) -> np.ndarray:
    """Like `_ellipse` but boxier: the abdomen's cross-section is flatter than an ellipse."""
    return sum(
        np.abs((c - c0) / r) ** power for c, c0, r in zip(coords, centre, radii, strict=True)
    )


def _grid_mm(shape, spacing, centred: bool) -> tuple[np.ndarray, ...]:
    """Open-grid coordinates in mm per array axis, broadcastable to `shape`."""
    axes = []
    for n, (size, step) in enumerate(zip(shape, spacing, strict=True)):
        c = np.arange(size, dtype=np.float32)
        if centred:
            c -= (size - 1) / 2
        axes.append((c * step).reshape([-1 if k == n else 1 for k in range(len(shape))]))
    return tuple(axes)


def _torso_slice(p: np.ndarray, lr: np.ndarray, torso: _Torso) -> _Slice:
    """Body wall, spine, back muscles, psoas, aorta and IVC on (posterior, left) coordinates."""
    (cp, cl), (rp, rl), (vp, vl) = torso.centre, torso.radii, torso.spine
    body = _superellipse((p, lr), (cp, cl), (rp, rl)) <= 1
    fat_in = (rp - torso.fat, rl - torso.fat)
    under_fat = _superellipse((p, lr), (cp, cl), fat_in) <= 1
    inner = _superellipse((p, lr), (cp, cl), (fat_in[0] - 9, fat_in[1] - 9)) <= 1
    hu = np.where(body, np.float32(FAT), np.float32(AIR))
    hu[under_fat] = MUSCLE
    hu[inner] = VISCERAL_FAT  # mesentery; bowel and organs are painted into it

    muscle = np.zeros_like(inner)
    for side in (-1, 1):
        muscle |= _ellipse((p, lr), (vp + 42, vl + side * 30), (17, 22)) <= 1  # erector spinae
        muscle |= _ellipse((p, lr), (vp - 5, vl + side * 31), (13, 11)) <= 1  # psoas
    muscle &= under_fat
    hu[muscle] = MUSCLE

    vertebra = _ellipse((p, lr), (vp, vl), (17, 21)) <= 1
    marrow = _ellipse((p, lr), (vp, vl), (14, 18)) <= 1
    canal_r2 = _ellipse((p, lr), (vp + 27, vl), (9, 9))
    arch = (canal_r2 <= 2.8) & (canal_r2 > 1) & (p > vp + 16)
    spinous = (np.abs(lr - vl) < 4) & (p >= vp + 35) & (p <= vp + 52)
    bone = vertebra | arch | spinous
    hu[bone] = BONE_RIM
    hu[marrow] = MARROW
    hu[canal_r2 <= 1] = CSF
    aorta = _ellipse((p, lr), (vp - 30, vl + 12), (11, 11)) <= 1
    ivc = _ellipse((p, lr), (vp - 28, vl - 24), (9, 13)) <= 1
    hu[aorta] = AORTA
    hu[ivc] = IVC
    hard = bone | (canal_r2 <= 1) | aorta | ivc

    shell = under_fat & ~inner
    lateral = (p > cp - 0.2 * rp) & (np.abs(lr - vl) > 45)
    return _Slice(
        hu=hu,
        inner=inner,
        occupied=hard | muscle,
        hard=hard,
        vertebra=vertebra,
        ribs=shell & lateral,
    )


@dataclass(frozen=True)
class _Loop:
    """A bowel loop: a ball with a soft-tissue wall around its content."""

    centre: tuple[float, float, float]
    radius: float
    content: float


def _bowel(box: tuple[tuple[float, float], ...], count: int, rng) -> list[_Loop]:
    """`count` loops with centres in `box` ((lo, hi) per axis, superior/posterior/left mm)."""
    contents = (SOFT, GAS, FLUID, CONTRAST, STOOL)
    return [
        _Loop(
            centre=tuple(float(rng.uniform(lo, hi)) for lo, hi in box),
            radius=float(rng.uniform(10, 24)),
            content=contents[rng.choice(5, p=[0.3, 0.3, 0.2, 0.1, 0.1])],
        )
        for _ in range(count)
    ]


def _paint_loops(hu, coords, free, loops: list[_Loop], wall: float) -> None:
    """Paint `loops` into `hu` where `free`, visiting only each loop's index box."""
    for loop in loops:
        near = _near(coords, loop.centre, loop.radius)
        local = [
            c[tuple(near[k] if j == k else slice(None) for j in range(3))]
            for k, c in enumerate(coords)
        ]
        r2 = _ellipse(local, loop.centre, [loop.radius] * 3)
        inside = free[near]
        hu[near][(r2 <= 1) & inside] = SOFT
        hu[near][(r2 <= (1 - wall / loop.radius) ** 2) & inside] = loop.content


def _organs(torso: _Torso, right: float, left: float) -> list[tuple[float, tuple, tuple]]:
    """Liver above the right kidney, spleen above the left: (HU, centre, radii) in (s, p, l)."""
    (cp, cl), (rp, rl), (vp, _) = torso.centre, torso.radii, torso.spine
    return [
        (LIVER, (right + 75, cp - 0.05 * rp, cl - 0.5 * rl), (100, 0.7 * rp, 0.5 * rl)),
        (SPLEEN, (left + 50, vp + 5, cl + 0.55 * rl), (50, 0.35 * rp, 0.2 * rl)),
    ]


def _discs(s, phase: float):
    return (s - phase) % VERTEBRA_MM < DISC_MM


def _rib_rows(s, phase: float, level: float):
    """Rib bands along S, only from the kidneys' level upwards (the lower ribs)."""
    return ((s - phase) % 30 < 10) & (s > level - 30)


def _near(coords, centre, radius) -> tuple[slice, ...]:
    """Index box of the open-grid points within `radius` of `centre` along every axis."""
    near = []
    for c, c0 in zip(coords, centre, strict=True):
        line = c.reshape(-1)
        near.append(
            slice(
                int(np.searchsorted(line, c0 - radius)),
                int(np.searchsorted(line, c0 + radius, side="right")),
            )
        )
    return tuple(near)


# ---------------------------------------------------------------- random anatomy


def _check_grid(shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    if len(shape) != 3 or any(int(n) != n or n < 8 for n in shape):
        raise ConfigError(
            f"synthetic shape {tuple(shape)} must be three integers >= 8, e.g. 64 64 64"
        )
    return tuple(int(n) for n in shape), _check_spacing(spacing)


def _check_spacing(spacing) -> tuple[float, float, float]:
    if len(spacing) != 3 or not all(math.isfinite(d) and d > 0 for d in spacing):
        raise ConfigError(
            f"spacing {tuple(spacing)} must be three positive sizes in mm, e.g. 2.5 1.6 1.6"
        )
    return tuple(float(d) for d in spacing)


def _kidney_axes(side: int, tilt: float, turn: float) -> np.ndarray:
    """Rows: the kidney's long, front-back and outward axes in (superior, posterior, left).

    The upper pole leans medially by `tilt` and the hilum turns to face forwards by `turn`.
    """
    long = np.array([math.cos(tilt), 0.0, -side * math.sin(tilt)])
    out = np.array([0.0, math.sin(turn), side * math.cos(turn)])
    out -= out.dot(long) * long
    out /= np.linalg.norm(out)
    return np.stack([long, np.cross(out, long), out])


def _frame(coords, centre, axes: np.ndarray) -> list[np.ndarray]:
    d = [c - c0 for c, c0 in zip(coords, centre, strict=True)]
    return [sum(float(a) * dc for a, dc in zip(row, d, strict=True)) for row in axes]


def random_case(
    seed: int,
    shape: tuple[int, int, int] = (64, 64, 64),
    spacing: tuple[float, float, float] = (2.5, 1.6, 1.6),
) -> SynthCase:
    """A random abdomen with two kidneys and usually one tumour, canonical layout."""
    shape, spacing = _check_grid(shape, spacing)
    rng = np.random.default_rng(seed)
    fov = [n * d for n, d in zip(shape, spacing, strict=True)]
    radii = (115.0 * rng.uniform(0.9, 1.1), 160.0 * rng.uniform(0.9, 1.1))
    # Shrink the body to the field of view in-plane; along S show ~240 mm of anatomy but never
    # stretch beyond real size nor squash more than in-plane.
    plane = min(1.0, 0.46 * fov[1] / radii[0], 0.46 * fov[2] / radii[1])
    scale = (float(np.clip(fov[0] / 240.0, plane, 1.0)), plane, plane)
    s, p, lr = (c / k for c, k in zip(_grid_mm(shape, spacing, True), scale, strict=True))
    voxel = [d / k for d, k in zip(spacing, scale, strict=True)]  # a voxel in anatomical mm

    jitter = [rng.uniform(-0.02, 0.02) * f / plane for f in fov[1:]]
    torso = _Torso(
        centre=(jitter[0], jitter[1]),
        radii=radii,
        fat=rng.uniform(12, 25),
        spine=(jitter[0] + radii[0] - 85, jitter[1]),
    )
    sl = _torso_slice(p, lr, torso)
    hu = np.broadcast_to(sl.hu, shape).copy()
    (cp, cl), (rp, rl), (vp, vl) = torso.centre, torso.radii, torso.spine
    level = rng.normal(0, 8)  # S position of the kidneys' centre
    hu[sl.vertebra & _discs(s, rng.uniform(0, VERTEBRA_MM))] = DISC
    hu[sl.ribs & _rib_rows(s, rng.uniform(0, 30), level)] = RIB

    kidneys = []
    for side in (-1, 1):  # right, left
        centre = (
            level + side * 10 + rng.normal(0, 6),
            vp + 8 + rng.normal(0, 4),
            vl + side * (72 + rng.normal(0, 5)),
        )
        size = np.array([55.0, 24.0, 30.0]) * rng.uniform(0.85, 1.15, 3)
        size = np.maximum(size, [3 * voxel[0], 2.5 * voxel[1], 2.5 * voxel[1]])
        axes = _kidney_axes(side, math.radians(rng.normal(12, 4)), math.radians(rng.normal(35, 8)))
        kidneys.append((centre, size, axes))

    free = sl.inner & ~sl.occupied
    for value, centre, size in _organs(torso, kidneys[0][0][0], kidneys[1][0][0]):
        organ = free & (_ellipse((s, p, lr), centre, size) <= 1)
        hu[organ] = value
        free = free & ~organ
    box = ((s.min(), s.max()), (cp - 0.85 * rp, vp - 30), (cl - 0.75 * rl, cl + 0.75 * rl))
    loops = _bowel(box, int(rng.integers(80, 110)), rng)
    _paint_loops(hu, (s, p, lr), free, loops, max(3.0, 1.2 * max(voxel)))

    label = np.zeros(shape, dtype=np.uint8)
    allowed = sl.inner & ~sl.hard
    frames = [_frame((s, p, lr), c, axes) for c, _, axes in kidneys]
    for (_, size, _), u in zip(kidneys, frames, strict=True):
        fat = _ellipse(u, (0, 0, 0), size + max(8.0, 1.5 * max(voxel))) <= 1
        hu[fat & allowed] = FAT
    for (_, size, _), u in zip(kidneys, frames, strict=True):
        rho = np.sqrt(_ellipse(u, (0, 0, 0), size))
        hilum = (u[2] / size[2] < -0.45) & (np.abs(u[0] / size[0]) < 0.4)
        kidney = (rho <= 1) & ~hilum & allowed
        hu[(rho <= 1) & hilum & allowed] = SINUS
        cortex, medulla = CORTEX + rng.normal(0, 10), MEDULLA + rng.normal(0, 8)
        hu[kidney] = np.where(rho[kidney] > 0.7, cortex, medulla)
        label[kidney] = 1

    if rng.random() < 0.85:
        centre, size, axes = kidneys[int(rng.integers(2))]
        v = rng.normal(size=3)
        at = np.asarray(centre) + (rng.uniform(0.5, 1.0) * v / np.linalg.norm(v) * size) @ axes
        r = rng.uniform(10, 30)
        rt = [max(r, 2 * voxel[0]), max(r, 2 * voxel[1]), max(r, 2 * voxel[2])]
        rho = np.sqrt(_ellipse((s, p, lr), at, rt))
        tumour = (rho <= 1) & allowed
        mean = rng.uniform(80, 100)
        necrosis = 45.0 * (r > 20) * np.clip((0.6 - rho[tumour]) / 0.3, 0, 1)
        hu[tumour] = mean + 15.0 * (rho[tumour] > 0.8) - necrosis
        label[tumour] = 2

    image = _finish(hu, spacing, rng)
    origin = tuple(-(shape[2 - c] - 1) / 2 * spacing[2 - c] for c in range(3))
    geometry = Geometry(shape, spacing, origin, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return SynthCase(image=image, label=label, geometry=geometry)


def _finish(hu: np.ndarray, spacing, rng: np.random.Generator) -> np.ndarray:
    """Blur, add noise, round to int16 HU."""
    sigma = [BLUR_MM / d for d in spacing]
    blurred = ndimage.gaussian_filter(hu, sigma, truncate=3.0, mode="nearest")
    image = np.clip(np.rint(blurred), *HU_RANGE).astype(np.int16)
    _add_noise(image, rng.uniform(10, 20), rng)
    return image


def _add_noise(image: np.ndarray, sd: float, rng: np.random.Generator) -> None:
    """Add Gaussian noise in place, then clip to the scanner's range.

    Big volumes reuse a pool of 4M samples at random offsets: drawing 160M normals would
    dominate the run time and nobody can see the repetition.
    """
    flat = image.reshape(-1)  # a view: `image` is contiguous
    size = min(flat.size, 1 << 22)
    pool = np.rint(rng.standard_normal(size, dtype=np.float32) * sd).astype(np.int16)
    pool = np.concatenate([pool, pool])
    for start in range(0, flat.size, size):
        stop = min(start + size, flat.size)
        offset = int(rng.integers(size))
        flat[start:stop] += pool[offset : offset + stop - start]
    np.clip(image, *HU_RANGE, out=image)


# ---------------------------------------------------------------- painting around real labels


@dataclass(frozen=True)
class _Layout:
    """Where the painted anatomy goes, in canonical mm from voxel (0, 0, 0)."""

    torso: _Torso
    right: float
    """S level of the right kidney (the liver sits above it)."""
    left: float
    """S level of the left kidney (the spleen sits above it)."""


def _layout(label_c: np.ndarray, spacing, rng: np.random.Generator) -> _Layout:
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
    torso = _Torso(
        centre=(back - rp, midline), radii=(rp, rl), fat=rng.uniform(12, 30), spine=(vp, midline)
    )
    return _Layout(torso=torso, right=float(sides[0][0]), left=float(sides[1][0]))


def _slabs(shape, spacing, layout: _Layout, rng: np.random.Generator):
    """2D background maps (unblurred) and, per canonical S index, which map it shows.

    One map per slab of ~4 mm: each is the cross-section of the same 3D anatomy (organs,
    bowel loops, discs, ribs) at the slab's centre, so sagittal and coronal views stay smooth.
    """
    torso = layout.torso
    (cp, cl), (rp, rl), (vp, _) = torso.centre, torso.radii, torso.spine
    _, p, lr = _grid_mm((1, *shape[1:]), (1.0, *spacing[1:]), False)
    sl = _torso_slice(p[0], lr[0], torso)
    fov_s = shape[0] * spacing[0]
    rows = max(1, round(max(4.0, fov_s / 128) / spacing[0]))  # at most ~128 maps
    which = np.arange(shape[0]) // rows
    disc_phase, rib_phase = rng.uniform(0, VERTEBRA_MM), rng.uniform(0, 30)
    level = (layout.left + layout.right) / 2
    box = ((0.0, fov_s), (cp - 0.85 * rp, vp - 30), (cl - 0.75 * rl, cl + 0.75 * rl))
    area = (box[1][1] - box[1][0]) * (box[2][1] - box[2][0])
    loops = _bowel(box, int(fov_s * area / 30000 * rng.uniform(0.8, 1.2)), rng)
    loop_s = np.array([loop.centre[0] for loop in loops])
    loop_r = np.array([loop.radius for loop in loops])
    organs = _organs(torso, layout.right, layout.left)
    maps = np.empty((which[-1] + 1, *shape[1:]), dtype=np.float32)
    for k in range(len(maps)):
        s = (k * rows + (min((k + 1) * rows, shape[0]) - 1)) / 2 * spacing[0]
        hu = sl.hu.copy()
        free = sl.inner & ~sl.occupied
        for value, centre, size in organs:
            shrink = 1 - ((s - centre[0]) / size[0]) ** 2  # the ellipsoid's cross-section
            if shrink > 0:
                radii = (size[1] * math.sqrt(shrink), size[2] * math.sqrt(shrink))
                organ = free & (_ellipse((p[0], lr[0]), centre[1:], radii) <= 1)
                hu[organ] = value
                free &= ~organ
        if _discs(s, disc_phase):
            hu[sl.vertebra] = DISC
        if _rib_rows(s, rib_phase, level):
            hu[sl.ribs] = RIB
        here = [loops[i] for i in np.flatnonzero(np.abs(loop_s - s) < loop_r)]
        coords = (np.full((1, 1, 1), s, dtype=np.float32), p, lr)
        _paint_loops(hu[None], coords, free[None], here, 3.0)
        maps[k] = hu
    return maps, which


def paint_ct(
    label: np.ndarray,
    spacing: tuple[float, float, float],
    seed: int,
    direction: np.ndarray | None = None,
) -> np.ndarray:
    """An int16 HU image of exactly `label`'s shape: kidneys (1), tumours (2) and a torso.

    `spacing` is in array order; `direction` (3x3, ``Geometry.direction_matrix``) says which
    array axis points where, so the body is upright whatever the file's orientation.
    """
    label = np.asarray(label)
    if label.ndim != 3 or label.size == 0:
        raise InputError(f"label map has shape {label.shape}; paint_ct needs a non-empty 3D array")
    spacing = _check_spacing(spacing)
    matrix = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64)
    if matrix.shape not in ((3, 3), (9,)):
        raise ConfigError(f"direction has shape {matrix.shape}; give the 3x3 direction matrix")
    geometry = Geometry(label.shape, spacing, (0.0, 0.0, 0.0), tuple(matrix.reshape(-1)))
    reo = Reorientation.to_canonical(geometry)
    shape_c = tuple(label.shape[a] for a in reo.axes)
    spacing_c = tuple(spacing[a] for a in reo.axes)
    rng = np.random.default_rng(seed)
    # A field of view narrower than an abdomen (a toy or cropped label) gets a smaller body:
    # the anatomy is laid out in mm scaled by `shrink`, the blur stays in real mm.
    shrink = min(1.0, min(n * d for n, d in zip(shape_c[1:], spacing_c[1:], strict=True)) / 380)
    anatomy = tuple(d / shrink for d in spacing_c)

    layout = _layout(reo.apply(label), anatomy, rng)
    maps, which = _slabs(shape_c, anatomy, layout, rng)
    sigma = [BLUR_MM / d for d in spacing_c]
    blurred = ndimage.gaussian_filter(maps, (0, sigma[1], sigma[2]), truncate=3.0, mode="nearest")
    blurred = np.rint(blurred).astype(np.int16)

    # Each map covers a run of slices: repeat it along S in the file's own layout (no
    # transposed copy of the full volume, which would cost seconds on a KiTS scan).
    counts = np.bincount(which)
    image = np.repeat(reo.invert(blurred), counts[::-1] if reo.flips[0] else counts, reo.axes[0])
    _paint_labels(image, label, reo, anatomy, sigma, maps, which, rng)
    _add_noise(image, rng.uniform(10, 20), rng)
    return image


def _paint_labels(image, label, reo, anatomy, sigma, maps, which, rng) -> None:
    """Add kidney and tumour HU inside the label's bounding box (canonical maths, in place).

    Painted as a blurred difference from the background, so the box edges leave no seam.
    """
    reach = [math.ceil(3 * sigma[list(reo.axes).index(a)]) + 1 for a in range(3)]
    box = []
    for a in range(3):
        hit = np.flatnonzero(np.any(label, axis=tuple(k for k in range(3) if k != a)))
        if not len(hit):
            return
        box.append(slice(max(hit[0] - reach[a], 0), min(hit[-1] + 1 + reach[a], label.shape[a])))
    box = tuple(box)
    crop = np.ascontiguousarray(reo.apply(label[box]))
    start = [
        label.shape[a] - box[a].stop if reo.flips[n] else box[a].start
        for n, a in enumerate(reo.axes)
    ]

    # Depth below the surface and a smooth texture field, on a ~2 mm subsample.
    step = [max(1, round(2.0 / d)) for d in anatomy]
    mm = [d * f for d, f in zip(anatomy, step, strict=True)]
    small = crop[:: step[0], :: step[1], :: step[2]]
    depth = ndimage.distance_transform_edt(small != 0, sampling=mm).astype(np.float32)
    tdepth = ndimage.distance_transform_edt(small == 2, sampling=mm).astype(np.float32)
    field = ndimage.gaussian_filter(
        rng.standard_normal(small.shape, dtype=np.float32), [4.0 / m for m in mm]
    )
    field /= max(float(field.std()), 1e-6)

    z, y, x = np.nonzero(crop)
    at = (z // step[0], y // step[1], x // step[2])
    tumour = crop[z, y, x] == 2
    d, td, f = depth[at], tdepth[at], field[at]
    cortex_mm = rng.uniform(4, 6)
    kidney_hu = np.where(d < cortex_mm, CORTEX + rng.normal(0, 10), MEDULLA + rng.normal(0, 8))
    necrosis = 50.0 * np.clip((td - 12) / 10, 0, 1)
    tumour_hu = rng.uniform(80, 100) + 12 * f - necrosis
    hu = np.where(tumour, tumour_hu, kidney_hu + 8 * f)
    background = maps[which[z + start[0]], y + start[1], x + start[2]]

    delta = np.zeros(crop.shape, dtype=np.float32)
    delta[z, y, x] = hu - background
    delta = ndimage.gaussian_filter(delta, sigma, truncate=3.0, mode="constant")
    view = reo.apply(image[box])
    view += np.rint(delta).astype(np.int16)


# ---------------------------------------------------------------- datasets on disk


def _label_files(labels_dir: Path, cases: int) -> list[Path]:
    if not labels_dir.is_dir():
        raise InputError(f"{labels_dir}: no such folder; give a KiTS-layout folder of label maps")
    files = sorted(labels_dir.glob("case_*/segmentation.nii.gz"))
    if len(files) < cases:
        raise InputError(
            f"{labels_dir}: holds {len(files)} case_*/segmentation.nii.gz but {cases} cases were "
            "asked for; ask for fewer cases"
        )
    return files[:cases]


def write_dataset(
    out: Path,
    cases: int,
    *,
    shape: tuple[int, int, int] = (64, 64, 64),
    spacing: tuple[float, float, float] = (2.5, 1.6, 1.6),
    seed: int = 0,
    labels_dir: Path | None = None,
    overwrite: bool = False,
    on_progress: ProgressFn = ignore,
) -> list[Path]:
    """Write ``out/case_XXXXX/{imaging,segmentation}.nii.gz`` (KiTS19 layout); case i uses seed + i.

    With `labels_dir`, each case is a real label map copied through unchanged (array, dtype,
    geometry) with an image painted around it; `shape` and `spacing` are then unused.
    `on_progress` hears after each case.
    """
    from voxseg.data.io import read_image, write_image

    out = Path(out)
    if cases < 1:
        raise ConfigError(f"cases is {cases}; ask for at least 1")
    if out.is_file():
        raise OutputExistsError(f"{out}: is a file; give a folder for the dataset")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out}: already exists and is not empty; pass --overwrite to replace it"
        )
    if labels_dir is None:
        _check_grid(shape, spacing)
        sources = [None] * cases
    else:
        sources = _label_files(Path(labels_dir), cases)

    written = []
    for i, source in enumerate(sources):
        if source is None:
            case = random_case(seed + i, shape, spacing)
            image, label, geometry = case.image, case.label, case.geometry
        else:
            label, geometry = read_image(source)
            image = paint_ct(label, geometry.spacing, seed + i, geometry.direction_matrix)
        folder = out / f"case_{i:05d}"
        write_image(folder / "imaging.nii.gz", image, geometry, overwrite=overwrite)
        write_image(folder / "segmentation.nii.gz", label, geometry, overwrite=overwrite)
        written.append(folder)
        on_progress(Step("synthesising", i + 1, cases))
    return written
