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


def keep_largest(mask: np.ndarray, n: int) -> np.ndarray:
    """Keep the `n` largest 26-connected components (all of them when `n` is 0)."""
    from scipy import ndimage

    if n == 0:
        return mask
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count <= n:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.argsort(sizes, kind="stable")[::-1][:n] + 1
    return np.isin(labels, keep)


def candidate_dice(mask: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dice of `mask` against `target` after each candidate of CANDIDATES (one labelling)."""
    from scipy import ndimage

    target = np.asarray(target, dtype=bool)
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    largest_first = np.argsort(np.bincount(labels.ravel())[1:], kind="stable")[::-1] + 1
    scores = []
    for n in CANDIDATES:
        kept = mask if n == 0 or count <= n else np.isin(labels, largest_first[:n])
        scores.append(dice(ConfusionCounts.from_masks(kept, target)))
    return np.array(scores)


def choose_keep_largest(mean_dice: Mapping[int, float]) -> int:
    """The candidate to use given each one's mean validation Dice (0 when none is known)."""
    if 0 not in mean_dice:
        return 0
    best = max(mean_dice, key=lambda n: (mean_dice[n], -n))
    return best if best and mean_dice[best] >= mean_dice[0] + MIN_GAIN else 0
