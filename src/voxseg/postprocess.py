"""Post-processing of a predicted mask: keep the N largest connected components.

Which N is chosen on the validation cases after training, as nnU-Net does: validation scores
every candidate on the probabilities it already computed, and the candidate that beats
keeping everything by a margin wins.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from voxseg.metrics import ConfusionCounts, dice

CANDIDATES = (0, 1, 2, 3)
"""0 keeps everything; kidneys come in pairs, so 2 is the usual winner for KiTS."""
MIN_GAIN = 0.002
"""A candidate must beat keeping everything by this much mean Dice to be chosen."""


class _Components:
    """The 26-connected components of a mask, labelled once, largest first."""

    def __init__(self, mask: np.ndarray) -> None:
        from scipy import ndimage

        self.mask = mask
        self.labels, self.count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        sizes = np.bincount(self.labels.ravel())[1:]
        self.largest_first = np.argsort(sizes, kind="stable")[::-1] + 1

    def keep(self, n: int) -> np.ndarray:
        if n == 0 or self.count <= n:
            return self.mask
        return np.isin(self.labels, self.largest_first[:n])


def keep_largest(mask: np.ndarray, n: int) -> np.ndarray:
    """Keep the `n` largest 26-connected components (all of them when `n` is 0)."""
    return mask if n == 0 else _Components(mask).keep(n)


def candidate_dice(mask: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dice of `mask` against `target` after each candidate of CANDIDATES (one labelling)."""
    target = np.asarray(target, dtype=bool)
    components = _Components(mask)
    return np.array(
        [dice(ConfusionCounts.from_masks(components.keep(n), target)) for n in CANDIDATES]
    )


def choose_keep_largest(mean_dice: Mapping[int, float]) -> int:
    """The candidate to use given each one's mean validation Dice (0 when none is known)."""
    if 0 not in mean_dice:
        return 0
    best = max(mean_dice, key=lambda n: (mean_dice[n], -n))
    return best if best and mean_dice[best] >= mean_dice[0] + MIN_GAIN else 0
