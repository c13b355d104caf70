"""Image geometry and the exact record of what preprocessing did to it. Pure maths, no I/O.

Conventions (the same everywhere in voxseg):
- Arrays are indexed like SimpleITK's ``GetArrayFromImage``: array axis 0 is ITK index axis k,
  axis 1 is j, axis 2 is i. ``shape`` and ``spacing`` are given in that *array* order.
- ``origin`` and ``direction`` are physical, in ITK's LPS world, exactly as in the file header:
  ``direction`` is the row-major 3x3 matrix whose column c is the world direction of index axis c.
- The *canonical* layout is the one with identity direction (ITK code "LPS"): array axes
  (0, 1, 2) run towards (superior, posterior, left). Every model sees canonical arrays, so the
  same scan stored as I,P,L (KiTS19) or as RAS gives the same input.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")

Vec3 = tuple[float, float, float]
Shape3 = tuple[int, int, int]


@dataclass(frozen=True)
class Geometry:
    """Where a voxel grid lies in the world."""

    shape: Shape3
    """Array shape, array order."""
    spacing: Vec3
    """Voxel size in mm, array order."""
    origin: Vec3
    """World position (mm, LPS) of the centre of voxel (0, 0, 0)."""
    direction: tuple[float, ...]
    """Row-major 3x3 direction cosines; column c is the world direction of ITK index axis c."""

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    @property
    def orientation(self) -> str:
        """Three-letter code of the world direction each ITK index axis (i, j, k) points to."""
        return orientation_code(self.direction_matrix)

    def index_to_world(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k, 1) ITK indices to LPS millimetres."""
        itk_spacing = np.asarray(self.spacing[::-1], dtype=np.float64)
        m = np.eye(4)
        m[:3, :3] = self.direction_matrix * itk_spacing[None, :]
        m[:3, 3] = self.origin
        return m

    def canonical_grid(self) -> tuple[Shape3, Vec3]:
        """Shape and spacing in the canonical (S, P, L) axis order training and `voxseg info`
        use, whatever the file's own axis order."""
        to_canonical = Reorientation.to_canonical(self)
        return to_canonical.permute(self.shape), to_canonical.permute(self.spacing)

    def same_grid(self, other: Geometry, atol: float = 1e-4) -> bool:
        """True when both describe the same voxel grid (shape exact, the rest within `atol`)."""
        return self.grid_difference(other, atol) is None

    def grid_difference(self, other: Geometry, atol: float = 1e-4) -> str | None:
        """The first field on which the grids differ, as "name (mine) vs (other)", or None.

        Spacing and direction within `atol`, the origin (mm, further from 0) within 10x that:
        `same_grid` asks this, so a message never blames a field that was within tolerance.
        """
        if self.shape != other.shape:
            return f"shape {self.shape} vs {other.shape}"
        for name, tol in (("spacing", atol), ("origin", atol * 10), ("direction", atol)):
            a, b = getattr(self, name), getattr(other, name)
            if not np.allclose(a, b, rtol=0, atol=tol):
                return f"{name} {tuple(round(v, 4) for v in a)} vs {tuple(round(v, 4) for v in b)}"
        return None

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(
            shape=tuple(int(v) for v in d["shape"]),
            spacing=tuple(float(v) for v in d["spacing"]),
            origin=tuple(float(v) for v in d["origin"]),
            direction=tuple(float(v) for v in d["direction"]),
        )


_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))  # positive / negative LPS world axes


def orientation_code(direction: np.ndarray) -> str:
    """ITK/DICOM orientation code, e.g. 'IPL' for KiTS19 files and 'LPS' for identity."""
    perm, signs = _axis_assignment(direction)
    return "".join(_LETTERS[perm[c]][0 if signs[c] > 0 else 1] for c in range(3))


def _axis_assignment(direction: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """For each ITK index axis c: the world axis it is closest to and the sign.

    Solved as an assignment (best of the 6 permutations) so that oblique directions still
    give a valid permutation.
    """
    best = max(
        itertools.permutations(range(3)),
        key=lambda p: sum(abs(direction[p[c], c]) for c in range(3)),
    )
    signs = tuple(1 if direction[best[c], c] >= 0 else -1 for c in range(3))
    return best, signs


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips that take a file-layout array to the canonical layout.

    ``canonical = flip(transpose(array, axes), flips)``; both steps are exact and invertible.
    """

    axes: Shape3
    """``np.transpose`` order: canonical axis n comes from array axis ``axes[n]``."""
    flips: tuple[bool, bool, bool]
    """Whether canonical axis n is flipped after the transpose."""

    @classmethod
    def to_canonical(cls, geometry: Geometry) -> Reorientation:
        perm, signs = _axis_assignment(geometry.direction_matrix)
        axes = [0, 0, 0]
        flips = [False, False, False]
        for c in range(3):  # ITK index axis c is array axis 2 - c; world axis w is canonical 2 - w
            axes[2 - perm[c]] = 2 - c
            flips[2 - perm[c]] = signs[c] < 0
        return cls(axes=tuple(axes), flips=tuple(flips))

    def permute(self, values: Sequence[T]) -> tuple[T, T, T]:
        """Per-axis values of a file-layout array (its shape, its spacing) in canonical order."""
        return tuple(values[a] for a in self.axes)

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        out = np.transpose(array, self.axes)
        flip_axes = tuple(n for n in range(3) if self.flips[n])
        return np.flip(out, flip_axes) if flip_axes else out

    def invert(self, array: np.ndarray) -> np.ndarray:
        flip_axes = tuple(n for n in range(3) if self.flips[n])
        out = np.flip(array, flip_axes) if flip_axes else array
        return np.transpose(out, np.argsort(self.axes))

    def apply_geometry(self, geometry: Geometry) -> Geometry:
        """The geometry of ``apply(array)``: the same voxels in the world, canonical layout."""
        old = geometry.index_to_world()
        shape, spacing = self.permute(geometry.shape), self.permute(geometry.spacing)
        # ITK index of canonical voxel 0 in the old grid, and the old index axis per new one.
        start = np.zeros(3)
        cols = np.zeros((3, 3))
        for n in range(3):
            old_itk = 2 - self.axes[n]
            new_itk = 2 - n
            sign = -1.0 if self.flips[n] else 1.0
            if self.flips[n]:
                start[old_itk] = geometry.shape[self.axes[n]] - 1
            cols[:, new_itk] = sign * old[:3, old_itk] / geometry.spacing[self.axes[n]]
        origin = old[:3, :3] @ start + old[:3, 3]
        return Geometry(
            shape=shape,
            spacing=spacing,
            origin=tuple(float(v) for v in origin),
            direction=tuple(float(v) for v in cols.reshape(-1)),
        )

    def to_dict(self) -> dict:
        return {"axes": list(self.axes), "flips": list(self.flips)}

    @classmethod
    def from_dict(cls, d: dict) -> Reorientation:
        return cls(axes=tuple(int(a) for a in d["axes"]), flips=tuple(bool(f) for f in d["flips"]))
