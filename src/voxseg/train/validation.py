"""Validation during training: each case predicted as `voxseg predict` would (sliding window on
the network grid), scored with the project's own Dice and the training loss.

Every candidate post-processing is scored on the same probabilities, so choosing it after
training costs no second prediction.

Windows do not overlap here (prediction overlaps them by `InferConfig.overlap`): validation
ranks epochs and picks post-processing, for which the seams between windows cost little,
and it runs ~2.4x fewer windows (4/3 per axis at 0.25 overlap), so it stays a small share of
a time budget even on CT-sized validation cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from voxseg.config import RunConfig
from voxseg.distributed import DistContext, all_sum
from voxseg.inference import predict_probabilities
from voxseg.losses import build_loss
from voxseg.metrics import ConfusionCounts, dice
from voxseg.postprocess import CANDIDATES, candidate_dice
from voxseg.regions import channels, nest
from voxseg.train.prepared import PreparedCase
from voxseg.weights import unwrap

VAL_OVERLAP = 0.0


@dataclass(frozen=True)
class ValResult:
    dice: np.ndarray
    """(n_cases, n_regions) Dice (both masks empty counts as 1)."""
    loss: np.ndarray
    """Per-case training loss on the whole case."""
    postprocess: np.ndarray
    """(n_cases, n_regions, len(CANDIDATES)) Dice after each keep-largest candidate."""

    @property
    def mean_dice(self) -> float:
        """Mean over cases and regions: what model selection and early stopping follow."""
        return float(self.dice.mean()) if self.dice.size else 0.0

    def region_dice(self) -> np.ndarray:
        """Mean Dice of each region over the cases."""
        return self.dice.mean(0) if self.dice.size else np.zeros(self.dice.shape[1:])

    @property
    def mean_loss(self) -> float:
        return float(self.loss.mean()) if self.loss.size else 0.0

    def postprocess_means(self, region: int = 0) -> dict[int, float]:
        """Mean Dice of each keep-largest candidate for one region."""
        means = self.postprocess[:, region].mean(0)
        return {n: float(v) for n, v in zip(CANDIDATES, means, strict=True)}


def case_loss(loss_fn: nn.Module, prob: np.ndarray, target: np.ndarray) -> float:
    """The training loss of a whole case, from probabilities (C, ...) turned back into logits
    and the region channels of the target."""
    p = torch.from_numpy(np.clip(prob, 1e-6, 1 - 1e-6))[None]
    t = torch.from_numpy(target)[None]
    return float(loss_fn(torch.logit(p), t))


def validate(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    config: RunConfig,
    device: torch.device,
    amp: torch.dtype | None,
) -> ValResult:
    loss_fn = build_loss(config.train.loss)
    regions = config.data.targets()
    model.eval()
    dices, losses, post = [], [], []
    for case in cases:
        prob = predict_probabilities(
            model,
            case.image,
            window=config.infer.window,
            overlap=min(config.infer.overlap, VAL_OVERLAP),
            device=device,
            amp=amp,
            pad_value=config.preprocess.pad_value,
        )
        # Scored as prediction writes them: each region clipped to the regions holding it.
        masks = nest(prob >= config.infer.threshold, regions)
        target = channels(case.label, len(regions))
        dices.append(
            [dice(ConfusionCounts.from_masks(m, t > 0)) for m, t in zip(masks, target, strict=True)]
        )
        losses.append(case_loss(loss_fn, prob, target))
        post.append([candidate_dice(m, t) for m, t in zip(masks, target, strict=True)])
    model.train()
    n = (len(cases), len(regions))
    return ValResult(
        np.asarray(dices, dtype=np.float64).reshape(n),
        np.asarray(losses, dtype=np.float64),
        np.asarray(post, dtype=np.float64).reshape(*n, len(CANDIDATES)),
    )


def validate_sharded(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    config: RunConfig,
    amp: torch.dtype | None,
    dist: DistContext,
) -> ValResult:
    """Each rank validates every world-size-th case; per-case values are summed across ranks
    (zeros elsewhere), so every rank holds the same result and takes the same decision."""
    mine = list(range(dist.rank, len(cases), dist.world_size))
    local = validate(unwrap(model), [cases[i] for i in mine], config, dist.device, amp)
    if not dist.active:
        return local
    full = []
    for values in (local.dice, local.loss, local.postprocess):
        array = np.zeros((len(cases), *values.shape[1:]))
        array[mine] = values
        full.append(all_sum(dist, array))
    return ValResult(*full)
