"""`paint_ct`: an image painted around a real label map (e.g. KiTS19) in any orientation.

The background comes from `background` (2D slabs broadcast along the superior axis); kidneys
and tumours are painted in 3D inside the label's bounding box only, as a blurred difference
from that background so the box leaves no seam. Tumours get `tumour`'s RCC-like model, one
look per connected tumour, rendered on a ~1 mm grid.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from voxseg.errors import ConfigError, InputError
from voxseg.geometry import Geometry, Reorientation
from voxseg.synth.background import fit_layout, slabs
from voxseg.synth.checks import check_spacing
from voxseg.synth.domain import DEFAULT, Domain
from voxseg.synth.finish import add_noise
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

TUMOUR_GRID_MM = 1.0
"""Tumours are rendered on a grid this fine and interpolated: enough for septa and a few-mm
texture, and cheap on 0.5 mm slices."""


def paint_ct(
    label: np.ndarray,
    spacing: tuple[float, float, float],
    seed: int,
    direction: np.ndarray | None = None,
    domain: Domain = DEFAULT,
) -> np.ndarray:
    """An int16 HU image of exactly `label`'s shape: kidneys (1), tumours (2) and a torso.

    `spacing` is in array order; `direction` (3x3, ``Geometry.direction_matrix``) says which
    array axis points where, so the body is upright whatever the file's orientation. `domain`
    sets the contrast phase, dose and kernel (the default paints what it always painted).
    """
    label = np.asarray(label)
    if label.ndim != 3 or label.size == 0:
        raise InputError(f"label map has shape {label.shape}; paint_ct needs a non-empty 3D array")
    spacing = check_spacing(spacing)
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

    layout = fit_layout(reo.apply(label), anatomy, rng)
    maps, which = slabs(shape_c, anatomy, layout, rng)
    sigma = [domain.blur_mm / d for d in spacing_c]
    blurred = ndimage.gaussian_filter(maps, (0, sigma[1], sigma[2]), truncate=3.0, mode="nearest")
    blurred = np.rint(blurred).astype(np.int16)

    # Each map covers a run of slices: repeat it along S in the file's own layout (no
    # transposed copy of the full volume, which would cost seconds on a KiTS scan).
    counts = np.bincount(which)
    image = np.repeat(reo.invert(blurred), counts[::-1] if reo.flips[0] else counts, reo.axes[0])
    _paint_labels(image, label, reo, spacing_c, shrink, maps, which, rng, domain)
    add_noise(image, rng.uniform(*domain.noise_sd), rng)
    return image


def _paint_labels(image, label, reo, spacing, shrink, maps, which, rng, domain: Domain) -> None:
    """Add kidney and tumour HU inside the label's bounding box (canonical maths, in place).

    `spacing` is the canonical image spacing; the anatomy is `shrink` times smaller than that.
    """
    sigma = [domain.blur_mm / d for d in spacing]
    anatomy = [d / shrink for d in spacing]
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

    # Kidneys: cortex by depth below the surface, a faint smooth texture; on a ~2 mm subsample.
    step = [max(1, round(2.0 / d)) for d in anatomy]
    mm = [d * f for d, f in zip(anatomy, step, strict=True)]
    small = crop[:: step[0], :: step[1], :: step[2]]
    depth = ndimage.distance_transform_edt(small != 0, sampling=mm).astype(np.float32)
    field = ndimage.gaussian_filter(
        rng.standard_normal(small.shape, dtype=np.float32), [4.0 / m for m in mm]
    )
    field /= max(float(field.std()), 1e-6)

    z, y, x = np.nonzero(crop)
    at = (z // step[0], y // step[1], x // step[2])
    d, f = depth[at], field[at]
    cortex_mm = rng.uniform(4, 6)
    cortex, medulla = domain.cortex + rng.normal(0, 10), domain.medulla + rng.normal(0, 8)
    hu = np.where(d < cortex_mm, cortex, medulla) + 8 * f
    tumours = own_stream(rng)
    tumour = crop[z, y, x] == 2
    if tumour.any():
        points = (z[tumour], y[tumour], x[tumour])
        kidney = Kidney(cortex=float(cortex), medulla=float(medulla))
        kidney_hu = np.zeros(crop.shape, dtype=np.float32)
        kidney_hu[z, y, x] = hu
        hu[tumour] = _tumour_hu(crop, kidney_hu, points, spacing, shrink, kidney, tumours)
    background = maps[which[z + start[0]], y + start[1], x + start[2]]

    delta = np.zeros(crop.shape, dtype=np.float32)
    delta[z, y, x] = hu - background
    delta = ndimage.gaussian_filter(delta, sigma, truncate=3.0, mode="constant")
    view = reo.apply(image[box])
    view += np.rint(delta).astype(np.int16)


def _tumour_hu(crop, kidney_hu, points, spacing, shrink, kidney: Kidney, rng) -> np.ndarray:
    """HU at `points` (indices into the canonical `crop`) of its tumours.

    One look per connected tumour, sized by its anatomical depth, made conspicuous against the
    kidney around it (`kidney_hu`, crop-shaped) and rendered on a ~1 mm grid in image mm, then
    interpolated linearly to the voxels.
    """
    step = tuple(max(1, round(TUMOUR_GRID_MM / d)) for d in spacing)
    mm = [d * f for d, f in zip(spacing, step, strict=True)]
    tumour, parenchyma = _block_any(crop == 2, step), _block_any(crop == 1, step)
    every = tuple(slice(None, None, f) for f in step)  # one voxel per block, for exact HU
    kidney_hu, kidney_at = kidney_hu[every], crop[every] == 1
    parts, _ = ndimage.label(tumour, structure=np.ones((3, 3, 3)))
    grid = np.zeros(tumour.shape, dtype=np.float32)
    for k, found in enumerate(ndimage.find_objects(parts), start=1):
        box = tuple(slice(max(b.start - 2, 0), b.stop + 2) for b in found)  # room to interpolate
        inside = parts[box] == k
        depth = depth_mm(inside, mm)
        wide = surround_box(found, mm)
        around = surround_hu(kidney_hu[wide], kidney_at[wide], parts[wide] == k, mm)
        look = draw_look(rng, float(depth.max()) / shrink, kidney)
        look = conspicuous(look, around, kidney, rng)
        painted = render(look, depth, parenchyma[box], mm, rng)
        mine = inside | ~tumour[box]  # leave neighbouring tumours' cells alone
        grid[box][mine] = painted[mine]
    at = [(i - (f - 1) / 2) / f for i, f in zip(points, step, strict=True)]  # block centres
    return ndimage.map_coordinates(grid, at, order=1, mode="nearest")


def _block_any(mask: np.ndarray, step) -> np.ndarray:
    """Whether any voxel of each `step`-sized block is set: thin parts survive the subsample."""
    if all(f == 1 for f in step):
        return mask
    padded = np.pad(mask, [(0, -n % f) for n, f in zip(mask.shape, step, strict=True)])
    blocks = [v for n, f in zip(padded.shape, step, strict=True) for v in (n // f, f)]
    return padded.reshape(blocks).any(axis=(1, 3, 5))
