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
from voxseg.metrics import ConfusionCounts, dice
from voxseg.prediction import keep_largest
from voxseg.train.loop import predict_case

CANDIDATES = (0, 1, 2, 3)
"""0 keeps everything; kidneys come in pairs, so 2 is the usual winner for KiTS."""
MIN_GAIN = 0.002
"""A candidate must beat keeping everything by this much mean Dice to be chosen."""


@dataclass(frozen=True)
class PostprocessChoice:
    keep_largest: int
    dice: dict[int, float]
    """Mean validation Dice for each candidate."""


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
        prob = predict_case(model, case, config, device, amp, pad_value)
        mask = prob >= config.infer.threshold
        target = np.asarray(case.label, dtype=bool)
        for n in CANDIDATES:
            scores[n].append(
                dice(ConfusionCounts.from_masks(keep_largest(mask, n) if n else mask, target))
            )
    means = {n: float(np.mean(v)) if v else 0.0 for n, v in scores.items()}
    best = max(CANDIDATES, key=lambda n: means[n])
    chosen = best if best and means[best] >= means[0] + MIN_GAIN else 0
    return PostprocessChoice(chosen, means)
