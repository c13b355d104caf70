"""Labels as read: the binary target, label-value checks and image/label agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voxseg.errors import InputError
from voxseg.geometry import Geometry

MAX_LABEL_VALUES = 32
"""More distinct values than this means the file is probably an image, not a label map."""


MAX_CLASS = 31
"""With the default target (every non-zero label), larger values are suspicious (e.g. 255 as
an 'ignore' marker) and need an explicit --foreground."""


def label_values(
    label: np.ndarray, path: Path, foreground: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """Distinct label values, refusing maps that cannot be label maps."""
    if label.dtype.kind == "f" and not np.array_equal(label, np.round(label)):
        raise InputError(f"{path}: label map has non-integer values; give an integer label map")
    values = (
        np.unique(label)
        if label.dtype.itemsize > 1
        else np.flatnonzero(np.bincount(label.ravel().view(np.uint8)))
    )
    if label.dtype.kind == "i" and values.size and values.min() < 0:
        raise InputError(
            f"{path}: label map has negative values ({int(values.min())}); labels must be >= 0"
        )
    if values.size > MAX_LABEL_VALUES:
        raise InputError(
            f"{path}: {values.size} distinct values; this looks like an image, not a label map "
            "(check image and label are not swapped)"
        )
    odd = [int(v) for v in values if v > MAX_CLASS]
    if foreground is None and odd:
        raise InputError(
            f"{path}: label value {odd[0]} is unexpected (every non-zero label would count as "
            "foreground); choose the target with --foreground (e.g. --foreground 1,2) or remap it"
        )
    return tuple(int(v) for v in values)


def check_pair(image: Geometry, label: Geometry, image_path: Path, label_path: Path) -> None:
    """Image and label must lie on the same grid."""
    if image.shape != label.shape:
        raise InputError(
            f"{label_path}: label shape {label.shape} differs from image {image_path.name} "
            f"shape {image.shape}; the label must be on the image's grid (resample it)"
        )
    if not image.same_grid(label):
        raise InputError(
            f"{label_path}: label spacing/origin/direction differ from {image_path.name}; "
            "resample the label onto the image grid (e.g. with SimpleITK) or fix its header"
        )
