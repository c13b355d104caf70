"""Kidney tumours that look like renal cell carcinoma on late arterial / nephrographic CT.

KiTS19's tumours are mostly renal cell carcinoma (RCC), about three in four clear-cell. In this
phase clear-cell RCC enhances avidly but heterogeneously: its solid parts approach cortex while
the lesion as a whole stays below it, often near medulla. Papillary RCC is hypovascular and fairly
homogeneous (~60-90 HU); chromophobe RCC sits in between. Necrosis and cystic change show as
irregular, non-enhancing 10-40 HU regions, commoner and larger the bigger the tumour (most above
~4 cm), off-centre as often as central, and often leave an enhancing peripheral rim or septa;
a minority calcify. Where a tumour meets the kidney its margin is iso-attenuating with the
parenchyma in places rather than a clean step everywhere.

Every KiTS19 tumour was found and outlined by a reader, so none is invisible: `conspicuous`
moves a tumour's viable tissue, where it has to, to at least MIN_CONTRAST_HU from the parenchyma
around it. Real tumours near medulla attenuation are still seen because they break the kidney's
architecture (pyramids, columns, sinus), which the painted kidney, a cortex shell over a uniform
medulla, lacks; without the rule 16 of the 53 tumours painted around KiTS19 cases 0-49 came
within 10 HU of the kidney 2-6 mm around them, and no reader could have drawn those.

So each tumour draws a `Look`: clear-cell-like (65 %, 25-60 HU below its kidney's cortex,
strongly textured), papillary-like (20 %, 60-90 HU) or chromophobe-like (15 %, near medulla),
with texture grain, necrotic share (likelier and larger with size), rim, septa and the odd
calcification; `render` turns it into HU on a grid: two smoothed random fields (a few mm and
~3x that) for the texture, a necrotic core grown from a random deep point along a noisy depth
map that spares a viable wall, a rim that fades inwards, and patches of the kidney interface
faded towards parenchyma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage, special

from voxseg.synth.shapes import ellipse, grid_mm
from voxseg.synth.texture import smooth_field

RIM_MM = 2.0
"""Depth over which an enhancing rim fades (e-folding)."""
MARGIN_MM = 3.0
"""Depth over which a tumour fades into the parenchyma where its margin is ill-defined."""
WALL_MM = 3.0
"""Viable tissue necrosis leaves under the surface (less in small tumours)."""
MIN_CONTRAST_HU = 30.0
"""Least difference between a tumour's viable tissue and the parenchyma around it: twice the
painted scanner noise (10-20 HU SD), enough for a reader to see a lesion a centimetre across."""
SURROUND_MM = 5.0
"""How far around a tumour the parenchyma it is compared with reaches."""
CLEAR_CELL_BELOW_CORTEX = (25.0, 60.0)
"""HU by which a clear-cell-like tumour's viable tissue stays below its kidney's cortex."""


@dataclass(frozen=True)
class Kidney:
    """The enhancement of the kidney a tumour grows from: the tumour's is drawn relative to it."""

    cortex: float
    medulla: float


@dataclass(frozen=True)
class Look:
    """One tumour's appearance, drawn once per tumour."""

    solid: float
    """Mean HU of the viable, enhancing tissue."""
    texture: float
    """SD in HU of the enhancement's spatial variation."""
    grain_mm: float
    """Scale of the fine texture; a coarser, lobular one is three times as large."""
    necrosis: float
    """Share of the tumour's volume that is necrotic or cystic (0: none)."""
    necrosis_hu: float
    rim: float
    """HU an enhancing rim adds at the surface (0: none)."""
    septa: bool
    """Thin enhancing septa cross the necrotic or cystic part."""
    margin: float
    """Share of the kidney interface where the tumour fades to parenchyma-like HU."""
    parenchyma: float
    """The HU it fades to there."""
    calcifications: int


def own_stream(rng: np.random.Generator) -> np.random.Generator:
    """A generator for the tumours, seeded by exactly one draw of `rng`.

    The rest of the case (its noise included) then does not depend on how many draws the
    tumours take.
    """
    return np.random.default_rng(int(rng.bit_generator.random_raw()))


def depth_mm(inside: np.ndarray, spacing) -> np.ndarray:
    """Distance in mm below the surface of `inside` (0 outside)."""
    return ndimage.distance_transform_edt(inside, sampling=spacing).astype(np.float32)


def draw_look(rng: np.random.Generator, radius_mm: float, kidney: Kidney) -> Look:
    """A tumour's look; `radius_mm` is its anatomical size (its largest inscribed ball)."""
    kind = rng.choice(3, p=(0.65, 0.2, 0.15))
    if kind == 0:  # clear-cell-like: avid, heterogeneous, below cortex
        solid = kidney.cortex - rng.uniform(*CLEAR_CELL_BELOW_CORTEX)
        texture = rng.uniform(20, 32)
    elif kind == 1:  # papillary-like: hypo-enhancing, more homogeneous
        solid, texture = rng.uniform(60, 90), rng.uniform(12, 18)
    else:  # chromophobe-like: near medulla
        solid, texture = kidney.medulla + rng.uniform(-20, 15), rng.uniform(15, 22)
    big = float(np.clip((radius_mm - 10) / 15, 0, 1))  # 0 at 2 cm across, 1 from 5 cm
    necrotic = bool(rng.random() < max(0.1, big))
    necrosis = rng.uniform(0.1, 0.15 + 0.25 * big) if necrotic else 0.0
    rim = rng.uniform(15, 40) if rng.random() < (0.5 if necrotic else 0.15) else 0.0
    grain, necrosis_hu = rng.uniform(1.5, 3.5), rng.uniform(10, 35)
    septa = necrotic and bool(rng.random() < 0.35)
    margin = rng.uniform(0.2, 0.7)
    calcifications = int(rng.integers(1, 4)) if rng.random() < 0.12 else 0
    return Look(
        solid=solid,
        texture=texture,
        grain_mm=grain,
        necrosis=necrosis,
        necrosis_hu=necrosis_hu,
        rim=_rim_below_cortex(rim, solid, kidney),
        septa=septa,
        margin=margin,
        parenchyma=(kidney.cortex + kidney.medulla) / 2,
        calcifications=calcifications,
    )


def surround_box(found: tuple[slice, ...], spacing) -> tuple[slice, ...]:
    """A tumour's index box (`ndimage.find_objects`) grown by SURROUND_MM, for `surround_hu`."""
    reach = [math.ceil(SURROUND_MM / d) + 1 for d in spacing]
    return tuple(slice(max(b.start - r, 0), b.stop + r) for b, r in zip(found, reach, strict=True))


def surround_hu(
    hu: np.ndarray, parenchyma: np.ndarray, inside: np.ndarray, spacing
) -> float | None:
    """Mean HU of the parenchyma within SURROUND_MM of the tumour `inside` (None if it touches
    none); all three arrays share one box, `surround_box` of the tumour."""
    near = ndimage.distance_transform_edt(~inside, sampling=spacing) <= SURROUND_MM
    ring = parenchyma & near & ~inside
    return float(hu[ring].mean()) if ring.any() else None


def conspicuous(
    look: Look, surround: float | None, kidney: Kidney, rng: np.random.Generator
) -> Look:
    """`look` with its viable tissue at least MIN_CONTRAST_HU from `surround`, the parenchyma
    around the tumour (`surround_hu`; None: left as drawn).

    A tumour inside the band moves out on its own side by the least amount plus a random
    margin of up to half the band, so moved tumours spread instead of piling up on the edge;
    brighter only while it stays as far below cortex as a clear-cell draw, else darker.
    A conspicuous tumour is left as drawn and takes no draw from `rng`.
    """
    if surround is None or abs(look.solid - surround) >= MIN_CONTRAST_HU:
        return look
    beyond = MIN_CONTRAST_HU + rng.uniform(0, MIN_CONTRAST_HU / 2)
    if look.solid > surround and surround + beyond <= kidney.cortex - CLEAR_CELL_BELOW_CORTEX[0]:
        solid = surround + beyond
    else:
        solid = surround - beyond
    return replace(look, solid=solid, rim=_rim_below_cortex(look.rim, solid, kidney))


def _rim_below_cortex(rim: float, solid: float, kidney: Kidney) -> float:
    """`rim` capped so the rim is as bright as cortex at most."""
    return max(0.0, min(rim, kidney.cortex - 5 - solid))


def render(
    look: Look, depth: np.ndarray, kidney: np.ndarray, spacing, rng: np.random.Generator
) -> np.ndarray:
    """float32 HU over `depth`'s grid for the tumour where `depth` (mm, `depth_mm`) > 0.

    `kidney` marks parenchyma on the same grid. Values outside the tumour are only there so
    that interpolating near its edge has neighbours.
    """
    fine = smooth_field(rng, depth.shape, spacing, look.grain_mm)
    lobes = smooth_field(rng, depth.shape, spacing, 3 * look.grain_mm)
    texture = (fine + lobes) / math.sqrt(2)
    # Centred on the tumour, so `solid` stays its mean even where lobes outsize it.
    texture -= texture[depth > 0].mean()
    hu = look.solid + look.texture * texture + look.rim * np.exp(-depth / RIM_MM)
    if look.necrosis:
        core = look.necrosis_hu + 4.0 * texture  # no enhancement: only faint texture
        if look.septa:  # thin sheets along the zero set of a field
            sheets = np.clip(1 - np.abs(smooth_field(rng, depth.shape, spacing, 4.0)) / 0.25, 0, 1)
            core = core + sheets * (look.solid - look.necrosis_hu)
        hu += _necrotic(look.necrosis, depth, spacing, rng) * (core - hu)
    outside = kidney & (depth == 0)
    if outside.any():
        target = look.parenchyma + 0.5 * look.texture * fine
        hu += _fading(look.margin, depth, outside, spacing, rng) * (target - hu)
    for _ in range(look.calcifications):
        _calcify(hu, depth, spacing, rng)
    return hu.astype(np.float32)


def _necrotic(share: float, depth: np.ndarray, spacing, rng) -> np.ndarray:
    """0-1 weight of necrosis: about `share` of the tumour, an irregular, off-centre core that
    spares a viable wall under the surface."""
    deepest = float(depth.max())
    deep = np.argwhere(depth >= 0.5 * deepest)
    start = deep[rng.integers(len(deep))] * np.asarray(spacing)
    dist = np.sqrt(ellipse(grid_mm(depth.shape, spacing, False), start, (1.0, 1.0, 1.0)))
    blob = smooth_field(rng, depth.shape, spacing, max(2.0, deepest / 4))
    wall = np.clip(1 - depth / min(WALL_MM, 0.35 * deepest), 0, 1)
    score = (depth - 0.5 * dist) / deepest + 0.5 * blob - 2 * wall
    threshold = np.quantile(score[depth > 0], 1 - share)
    return np.clip((score - threshold) / 0.05 + 0.5, 0, 1)


def _fading(share: float, depth: np.ndarray, kidney: np.ndarray, spacing, rng) -> np.ndarray:
    """0-1 weight of fading into parenchyma: in patches covering `share` of the tumour's layer
    that touches the kidney, 1 at the interface and gone ~MARGIN_MM in.

    Nearness is the blurred kidney mask (0.5 on a flat interface): a distance transform would
    cost several times more on a big tumour's box.
    """
    sigma = [MARGIN_MM / 2 / d for d in spacing]
    near = ndimage.gaussian_filter(kidney.astype(np.float32), sigma, truncate=2.5)
    patches = smooth_field(rng, depth.shape, spacing, 5.0)
    chosen = np.clip((patches - special.ndtri(1 - share)) * 2 + 0.5, 0, 1)
    return chosen * np.clip(2 * near, 0, 1)


def _calcify(hu: np.ndarray, depth: np.ndarray, spacing, rng) -> None:
    """A punctate calcification, 1.6-4 mm across, at a random place in the tumour."""
    inside = np.argwhere(depth > 0)
    at = inside[rng.integers(len(inside))] * np.asarray(spacing)
    size = rng.uniform(0.8, 2.0)
    spot = ellipse(grid_mm(depth.shape, spacing, False), at, (size, size, size)) <= 1
    hu[spot & (depth > 0)] = rng.uniform(300, 700)
