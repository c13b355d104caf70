"""`random_case`: a whole abdomen with two kidneys and usually one tumour, from nothing.

Drawn from analytic shapes in the canonical layout (array axes run towards superior, posterior,
left). Shapes are defined in *anatomical* mm (a real adult's sizes) and the whole body is shrunk
to the field of view, so a 64^3 grid at 1.6 mm still holds a complete torso; kidneys never get
thinner than a few voxels. Tumour texture is rendered in the image's own mm, its size class
(how likely and how large necrosis is) from its anatomical size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from voxseg.geometry import Geometry
from voxseg.synth.checks import check_grid
from voxseg.synth.finish import finish
from voxseg.synth.shapes import ellipse, frame, grid_mm
from voxseg.synth.tissue import CORTEX, DISC, FAT, MEDULLA, RIB, SINUS, VERTEBRA_MM
from voxseg.synth.torso import Torso, bowel, discs, organs, paint_loops, rib_rows, torso_slice
from voxseg.synth.tumour import (
    Kidney,
    conspicuous,
    depth_mm,
    draw_look,
    own_stream,
    render,
    surround_box,
    surround_hu,
)


@dataclass(frozen=True)
class SynthCase:
    image: np.ndarray
    """int16 Hounsfield units, array order (canonical layout for ``random_case``)."""
    label: np.ndarray
    """uint8: 0 background, 1 kidney, 2 tumour (KiTS19 convention)."""
    geometry: Geometry


def kidney_axes(side: int, tilt: float, turn: float) -> np.ndarray:
    """Rows: the kidney's long, front-back and outward axes in (superior, posterior, left).

    The upper pole leans medially by `tilt` and the hilum turns to face forwards by `turn`.
    """
    long = np.array([math.cos(tilt), 0.0, -side * math.sin(tilt)])
    out = np.array([0.0, math.sin(turn), side * math.cos(turn)])
    out -= out.dot(long) * long
    out /= np.linalg.norm(out)
    return np.stack([long, np.cross(out, long), out])


def random_case(
    seed: int,
    shape: tuple[int, int, int] = (64, 64, 64),
    spacing: tuple[float, float, float] = (2.5, 1.6, 1.6),
) -> SynthCase:
    """A random abdomen with two kidneys and usually one tumour, canonical layout."""
    shape, spacing = check_grid(shape, spacing)
    rng = np.random.default_rng(seed)
    fov = [n * d for n, d in zip(shape, spacing, strict=True)]
    radii = (115.0 * rng.uniform(0.9, 1.1), 160.0 * rng.uniform(0.9, 1.1))
    # Shrink the body to the field of view in-plane; along S show ~240 mm of anatomy but never
    # stretch beyond real size nor squash more than in-plane.
    plane = min(1.0, 0.46 * fov[1] / radii[0], 0.46 * fov[2] / radii[1])
    scale = (float(np.clip(fov[0] / 240.0, plane, 1.0)), plane, plane)
    s, p, lr = (c / k for c, k in zip(grid_mm(shape, spacing, True), scale, strict=True))
    voxel = [d / k for d, k in zip(spacing, scale, strict=True)]  # a voxel in anatomical mm

    jitter = [rng.uniform(-0.02, 0.02) * f / plane for f in fov[1:]]
    torso = Torso(
        centre=(jitter[0], jitter[1]),
        radii=radii,
        fat=rng.uniform(12, 25),
        spine=(jitter[0] + radii[0] - 85, jitter[1]),
    )
    sl = torso_slice(p, lr, torso)
    hu = np.broadcast_to(sl.hu, shape).copy()
    (cp, cl), (rp, rl), (vp, vl) = torso.centre, torso.radii, torso.spine
    level = rng.normal(0, 8)  # S position of the kidneys' centre
    hu[sl.vertebra & discs(s, rng.uniform(0, VERTEBRA_MM))] = DISC
    hu[sl.ribs & rib_rows(s, rng.uniform(0, 30), level)] = RIB

    kidneys = []
    for side in (-1, 1):  # right, left
        centre = (
            level + side * 10 + rng.normal(0, 6),
            vp + 8 + rng.normal(0, 4),
            vl + side * (72 + rng.normal(0, 5)),
        )
        size = np.array([55.0, 24.0, 30.0]) * rng.uniform(0.85, 1.15, 3)
        size = np.maximum(size, [3 * voxel[0], 2.5 * voxel[1], 2.5 * voxel[1]])
        axes = kidney_axes(side, math.radians(rng.normal(12, 4)), math.radians(rng.normal(35, 8)))
        kidneys.append((centre, size, axes))

    free = sl.inner & ~sl.occupied
    for value, centre, size in organs(torso, kidneys[0][0][0], kidneys[1][0][0]):
        organ = free & (ellipse((s, p, lr), centre, size) <= 1)
        hu[organ] = value
        free = free & ~organ
    box = ((s.min(), s.max()), (cp - 0.85 * rp, vp - 30), (cl - 0.75 * rl, cl + 0.75 * rl))
    loops = bowel(box, int(rng.integers(80, 110)), rng)
    paint_loops(hu, (s, p, lr), free, loops, max(3.0, 1.2 * max(voxel)))

    label = np.zeros(shape, dtype=np.uint8)
    allowed = sl.inner & ~sl.hard
    frames = [frame((s, p, lr), c, axes) for c, _, axes in kidneys]
    for (_, size, _), u in zip(kidneys, frames, strict=True):
        fat = ellipse(u, (0, 0, 0), size + max(8.0, 1.5 * max(voxel))) <= 1
        hu[fat & allowed] = FAT
    enhancement = []
    for (_, size, _), u in zip(kidneys, frames, strict=True):
        rho = np.sqrt(ellipse(u, (0, 0, 0), size))
        hilum = (u[2] / size[2] < -0.45) & (np.abs(u[0] / size[0]) < 0.4)
        kidney = (rho <= 1) & ~hilum & allowed
        hu[(rho <= 1) & hilum & allowed] = SINUS
        cortex, medulla = CORTEX + rng.normal(0, 10), MEDULLA + rng.normal(0, 8)
        hu[kidney] = np.where(rho[kidney] > 0.7, cortex, medulla)
        label[kidney] = 1
        enhancement.append(Kidney(cortex=float(cortex), medulla=float(medulla)))

    if rng.random() < 0.85:
        k = int(rng.integers(2))
        centre, size, axes = kidneys[k]
        v = rng.normal(size=3)
        at = np.asarray(centre) + (rng.uniform(0.5, 1.0) * v / np.linalg.norm(v) * size) @ axes
        r = rng.uniform(10, 30)
        rt = [max(r, 2 * voxel[0]), max(r, 2 * voxel[1]), max(r, 2 * voxel[2])]
        tumour = (ellipse((s, p, lr), at, rt) <= 1) & allowed
        _paint_tumour(hu, label, tumour, spacing, r, enhancement[k], own_stream(rng))

    image = finish(hu, spacing, rng)
    origin = tuple(-(shape[2 - c] - 1) / 2 * spacing[2 - c] for c in range(3))
    geometry = Geometry(shape, spacing, origin, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return SynthCase(image=image, label=label, geometry=geometry)


def _paint_tumour(hu, label, tumour, spacing, radius_mm, kidney: Kidney, rng) -> None:
    """Render one tumour into `hu` and `label` (in place), on its own index box.

    Texture is in the image's mm, what the scanner resolves; the look's size class comes from
    the anatomical radius.
    """
    found = ndimage.find_objects(tumour.astype(np.uint8))
    if not found:
        return  # squeezed out by bone and vessels
    box = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in found[0])
    inside = tumour[box]
    wide = surround_box(found[0], spacing)
    around = surround_hu(hu[wide], label[wide] == 1, tumour[wide], spacing)
    look = conspicuous(draw_look(rng, radius_mm, kidney), around, kidney, rng)
    painted = render(look, depth_mm(inside, spacing), label[box] == 1, spacing, rng)
    hu[box][inside] = painted[inside]
    label[tumour] = 2
