"""The abdomen around the kidneys: body wall, spine, vessels, ribs, liver, spleen, bowel.

Shapes are in anatomical mm, laid out per axial slice as (posterior, left) pairs; both
`random_case` and `paint_ct` build their background from these pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxseg.synth.shapes import ellipse, near, superellipse
from voxseg.synth.tissue import (
    AIR,
    AORTA,
    BONE_RIM,
    CONTRAST,
    CSF,
    DISC_MM,
    FAT,
    FLUID,
    GAS,
    IVC,
    LIVER,
    MARROW,
    MUSCLE,
    SOFT,
    SPLEEN,
    STOOL,
    VERTEBRA_MM,
    VISCERAL_FAT,
)


@dataclass(frozen=True)
class Torso:
    """In-plane body layout in mm as (posterior, left) pairs; the same in every axial slice."""

    centre: tuple[float, float]
    radii: tuple[float, float]
    fat: float
    spine: tuple[float, float]
    """Centre of the vertebral body; muscles, vessels and canal sit at fixed offsets from it."""


@dataclass(frozen=True)
class Slice:
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


def torso_slice(p: np.ndarray, lr: np.ndarray, torso: Torso) -> Slice:
    """Body wall, spine, back muscles, psoas, aorta and IVC on (posterior, left) coordinates."""
    (cp, cl), (rp, rl), (vp, vl) = torso.centre, torso.radii, torso.spine
    body = superellipse((p, lr), (cp, cl), (rp, rl)) <= 1
    fat_in = (rp - torso.fat, rl - torso.fat)
    under_fat = superellipse((p, lr), (cp, cl), fat_in) <= 1
    inner = superellipse((p, lr), (cp, cl), (fat_in[0] - 9, fat_in[1] - 9)) <= 1
    hu = np.where(body, np.float32(FAT), np.float32(AIR))
    hu[under_fat] = MUSCLE
    hu[inner] = VISCERAL_FAT  # mesentery; bowel and organs are painted into it

    muscle = np.zeros_like(inner)
    for side in (-1, 1):
        muscle |= ellipse((p, lr), (vp + 42, vl + side * 30), (17, 22)) <= 1  # erector spinae
        muscle |= ellipse((p, lr), (vp - 5, vl + side * 31), (13, 11)) <= 1  # psoas
    muscle &= under_fat
    hu[muscle] = MUSCLE

    vertebra = ellipse((p, lr), (vp, vl), (17, 21)) <= 1
    marrow = ellipse((p, lr), (vp, vl), (14, 18)) <= 1
    canal_r2 = ellipse((p, lr), (vp + 27, vl), (9, 9))
    arch = (canal_r2 <= 2.8) & (canal_r2 > 1) & (p > vp + 16)
    spinous = (np.abs(lr - vl) < 4) & (p >= vp + 35) & (p <= vp + 52)
    bone = vertebra | arch | spinous
    hu[bone] = BONE_RIM
    hu[marrow] = MARROW
    hu[canal_r2 <= 1] = CSF
    aorta = ellipse((p, lr), (vp - 30, vl + 12), (11, 11)) <= 1
    ivc = ellipse((p, lr), (vp - 28, vl - 24), (9, 13)) <= 1
    hu[aorta] = AORTA
    hu[ivc] = IVC
    hard = bone | (canal_r2 <= 1) | aorta | ivc

    shell = under_fat & ~inner
    lateral = (p > cp - 0.2 * rp) & (np.abs(lr - vl) > 45)
    return Slice(
        hu=hu,
        inner=inner,
        occupied=hard | muscle,
        hard=hard,
        vertebra=vertebra,
        ribs=shell & lateral,
    )


@dataclass(frozen=True)
class Loop:
    """A bowel loop: a ball with a soft-tissue wall around its content."""

    centre: tuple[float, float, float]
    radius: float
    content: float


def bowel(box: tuple[tuple[float, float], ...], count: int, rng) -> list[Loop]:
    """`count` loops with centres in `box` ((lo, hi) per axis, superior/posterior/left mm)."""
    contents = (SOFT, GAS, FLUID, CONTRAST, STOOL)
    return [
        Loop(
            centre=tuple(float(rng.uniform(lo, hi)) for lo, hi in box),
            radius=float(rng.uniform(10, 24)),
            content=contents[rng.choice(5, p=[0.3, 0.3, 0.2, 0.1, 0.1])],
        )
        for _ in range(count)
    ]


def paint_loops(hu, coords, free, loops: list[Loop], wall: float) -> None:
    """Paint `loops` into `hu` where `free`, visiting only each loop's index box."""
    for loop in loops:
        box = near(coords, loop.centre, loop.radius)
        local = [
            c[tuple(box[k] if j == k else slice(None) for j in range(3))]
            for k, c in enumerate(coords)
        ]
        r2 = ellipse(local, loop.centre, [loop.radius] * 3)
        inside = free[box]
        hu[box][(r2 <= 1) & inside] = SOFT
        hu[box][(r2 <= (1 - wall / loop.radius) ** 2) & inside] = loop.content


def organs(torso: Torso, right: float, left: float) -> list[tuple[float, tuple, tuple]]:
    """Liver above the right kidney, spleen above the left: (HU, centre, radii) in (s, p, l)."""
    (cp, cl), (rp, rl), (vp, _) = torso.centre, torso.radii, torso.spine
    return [
        (LIVER, (right + 75, cp - 0.05 * rp, cl - 0.5 * rl), (100, 0.7 * rp, 0.5 * rl)),
        (SPLEEN, (left + 50, vp + 5, cl + 0.55 * rl), (50, 0.35 * rp, 0.2 * rl)),
    ]


def discs(s, phase: float):
    """Intervertebral disc bands along S."""
    return (s - phase) % VERTEBRA_MM < DISC_MM


def rib_rows(s, phase: float, level: float):
    """Rib bands along S, only from the kidneys' level upwards (the lower ribs)."""
    return ((s - phase) % 30 < 10) & (s > level - 30)
