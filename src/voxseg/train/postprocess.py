"""Choose post-processing on the validation cases, as nnU-Net does after training: keep only
the N largest connected components when that raises the validation Dice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from voxseg.config import RunConfig
from voxseg.data.cache import PreparedCase
from voxseg.inference import predict_probabilities
from voxseg.prediction import keep_largest

CANDIDATES = (0, 1, 2, 3)
"""0 keeps everything; kidneys come in pairs, so 2 is the usual winner for KiTS."""
MIN_GAIN = 0.002
"""A candidate must beat keeping everything by this much mean Dice to be chosen."""


@dataclass(frozen=True)
class PostprocessChoice:
    keep_largest: int
    dice: dict[int, float]
    """Mean validation Dice for each candidate."""


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    denom = pred.sum() + target.sum()
    return 1.0 if denom == 0 else 2.0 * float(np.sum(pred & target)) / float(denom)


def choose_keep_largest(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    config: RunConfig,
    device: torch.device,
    amp: torch.dtype | None,
    pad_value: float,
) -> PostprocessChoice:
    scores: dict[int, list[float]] = {n: [] for n in CANDIDATES}
    model.eval()
    for case in cases:
        prob = predict_probabilities(
            model,
            case.image,
            patch_size=config.train.patch_size,
            overlap=config.infer.overlap,
            device=device,
            amp=amp,
            pad_value=pad_value,
        )
        mask = prob >= config.infer.threshold
        target = np.asarray(case.label, dtype=bool)
        for n in CANDIDATES:
            scores[n].append(_dice(keep_largest(mask, n) if n else mask, target))
    means = {n: float(np.mean(v)) if v else 0.0 for n, v in scores.items()}
    best = max(CANDIDATES, key=lambda n: means[n])
    chosen = best if best and means[best] >= means[0] + MIN_GAIN else 0
    return PostprocessChoice(chosen, means)
