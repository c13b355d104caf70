"""Pure array functions: reorient, HU window + normalisation, crop to body, resample.

`preprocess_image` returns the network input and a `PreprocessRecord`; `restore` uses the
record to put a prediction back on the source grid exactly (same shape and layout as the
file's array, so writing it with the source `Geometry` reproduces the header).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from voxseg.config import PreprocessConfig
from voxseg.geometry import Geometry, Reorientation, Shape3, Vec3
from voxseg.regions import Region, encode
from voxseg.resample import resize  # numpy: both engines preprocess identically, no torch

BODY_HU = -500.0
"""Voxels above this HU count as body when cropping (air is about -1000, fat -100)."""
CROP_MARGIN_MM = 10.0


@dataclass(frozen=True)
class PreprocessRecord:
    """Everything needed to undo preprocessing for one case."""

    source: Geometry
    """Geometry of the file as read."""
    reorientation: Reorientation
    """File layout -> canonical layout."""
    crop: tuple[tuple[int, int], ...]
    """(start, stop) per canonical axis of the region that was resampled."""
    shape: Shape3
    """Resampled (network input) shape, canonical order."""

    @property
    def canonical_shape(self) -> Shape3:
        return self.reorientation.permute(self.source.shape)

    @property
    def canonical_spacing(self) -> Vec3:
        return self.reorientation.permute(self.source.spacing)

    @property
    def spacing(self) -> Vec3:
        """Effective voxel size of the resampled array (mm, canonical order)."""
        return tuple(
            sp * (stop - start) / n
            for sp, (start, stop), n in zip(
                self.canonical_spacing, self.crop, self.shape, strict=True
            )
        )

    def to_dict(self) -> dict:
        return {
            "source": self.source.to_dict(),
            "reorientation": self.reorientation.to_dict(),
            "crop": [list(c) for c in self.crop],
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessRecord:
        return cls(
            source=Geometry.from_dict(d["source"]),
            reorientation=Reorientation.from_dict(d["reorientation"]),
            crop=tuple((int(a), int(b)) for a, b in d["crop"]),
            shape=tuple(int(s) for s in d["shape"]),
        )


def normalise(
    image: np.ndarray, window: tuple[float, float], mean: float, std: float
) -> np.ndarray:
    """Clip to the HU window, then standardise. float32 out."""
    out = np.clip(image.astype(np.float32, copy=False), window[0], window[1])
    out -= np.float32(mean)
    out /= np.float32(max(std, 1e-6))
    return out


def body_box(
    canonical: np.ndarray, spacing: Vec3, threshold: float = BODY_HU
) -> tuple[tuple[int, int], ...]:
    """Bounding box of voxels above `threshold`, plus a margin; the whole volume if none."""
    body = canonical > threshold
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(body.any(axis=other))
        n = canonical.shape[axis]
        if hits.size == 0:
            return tuple((0, s) for s in canonical.shape)
        margin = int(np.ceil(CROP_MARGIN_MM / spacing[axis]))
        box.append((max(0, int(hits[0]) - margin), min(n, int(hits[-1]) + 1 + margin)))
    return tuple(box)


def target_shape(extent: Shape3, spacing: Vec3, target: Vec3) -> Shape3:
    """Array shape after resampling `extent` voxels of `spacing` to `target` spacing."""
    return tuple(
        max(1, int(round(n * s / t))) for n, s, t in zip(extent, spacing, target, strict=True)
    )


def record_for(
    source: Geometry, canonical: np.ndarray | None, cfg: PreprocessConfig
) -> PreprocessRecord:
    """Decide crop and resampled shape for one case (`canonical` is the reoriented image)."""
    reorientation = Reorientation.to_canonical(source)
    cshape, cspacing = source.canonical_grid()
    if cfg.crop_body and canonical is not None:
        crop = body_box(canonical, cspacing)
    else:
        crop = tuple((0, s) for s in cshape)
    extent = tuple(b - a for a, b in crop)
    if cfg.mode == "shape":
        if cfg.shape is None:
            raise ValueError("preprocess mode 'shape' needs `shape`")
        shape = tuple(cfg.shape)
    else:
        if cfg.spacing is None:
            raise ValueError("preprocess mode 'spacing' needs `spacing`")
        shape = target_shape(extent, cspacing, cfg.spacing)
    return PreprocessRecord(source=source, reorientation=reorientation, crop=crop, shape=shape)


def _crop(array: np.ndarray, crop: tuple[tuple[int, int], ...]) -> np.ndarray:
    return array[tuple(slice(a, b) for a, b in crop)]


def preprocess_image(
    image: np.ndarray, source: Geometry, cfg: PreprocessConfig
) -> tuple[np.ndarray, PreprocessRecord]:
    """File-layout HU array -> normalised canonical float32 network input + record."""
    reorientation = Reorientation.to_canonical(source)
    canonical = reorientation.apply(image)
    record = record_for(source, canonical, cfg)
    cropped = _crop(canonical, record.crop)
    resampled = resize(cropped, record.shape, antialias=True)
    return normalise(resampled, cfg.hu_window, cfg.mean, cfg.std), record


def preprocess_label(
    label: np.ndarray, record: PreprocessRecord, regions: tuple[Region, ...]
) -> np.ndarray:
    """Label map -> uint8 region bit mask on the network grid ({0, 1} for one region).

    Each region is resized linearly and thresholded at 0.5; interpolation is monotone, so
    nested regions stay nested.
    """
    cropped = _crop(record.reorientation.apply(label), record.crop)
    if cropped.shape == record.shape:
        return encode(cropped, regions)
    target = np.zeros(record.shape, dtype=np.uint8)
    for bit, region in enumerate(regions):
        inside = resize(region.mask(cropped).astype(np.uint8), record.shape, threshold=0.5)
        target |= inside.astype(np.uint8) << bit
    return target


def restore(
    probabilities: np.ndarray, record: PreprocessRecord, threshold: float = 0.5
) -> np.ndarray:
    """Probabilities on the network grid -> uint8 mask in the source file's array layout.

    Probabilities (not hard labels) are interpolated back, so boundaries land between
    network voxels instead of on their staircase.
    """
    extent = tuple(b - a for a, b in record.crop)
    canonical = np.zeros(record.canonical_shape, dtype=np.uint8)
    if min(extent) > 0:
        inside = tuple(slice(a, b) for a, b in record.crop)
        canonical[inside] = resize(probabilities, extent, threshold=threshold)
    return np.ascontiguousarray(record.reorientation.invert(canonical))


def restore_probabilities(probabilities: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """Probabilities on the network grid -> float32 probabilities in the source layout."""
    canonical = np.zeros(record.canonical_shape, dtype=np.float32)
    inside = tuple(slice(a, b) for a, b in record.crop)
    canonical[inside] = resize(probabilities, tuple(b - a for a, b in record.crop))
    return np.ascontiguousarray(record.reorientation.invert(canonical))
