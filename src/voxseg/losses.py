"""Training losses on logits. Dice is computed over the whole batch (MONAI's `batch=True`) or
per sample (nnU-Net's `batch_dice=False`). Per sample, a patch without foreground adds a
near-constant loss of 1 with a vanishing gradient (the 1e-5 smoothing), as in nnU-Net."""

from __future__ import annotations

import torch
from torch import nn


class DiceBCE(nn.Module):
    """Sigmoid Dice (per channel, over the batch or per sample) plus binary cross-entropy,
    one term each.

    MONAI's DiceCELoss switches to softmax cross-entropy when there is more than one channel;
    regions are independent sigmoids (they overlap), so each output needs BCE.
    """

    def __init__(self, batch_dice: bool = True) -> None:
        super().__init__()
        from monai.losses import DiceLoss

        self.dice = DiceLoss(sigmoid=True, batch=batch_dice, smooth_nr=1e-5, smooth_dr=1e-5)
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.dice(logits, target) + self.bce(logits, target)


def build_loss(name: str, batch_dice: bool = True) -> nn.Module:
    if name == "bce":
        return nn.BCEWithLogitsLoss()
    if name == "dice_bce":
        return DiceBCE(batch_dice)
    from voxseg.errors import ConfigError

    raise ConfigError(f"unknown loss {name!r}; choose bce or dice_bce")


def deep_supervision_loss(
    loss: nn.Module, outputs: list[torch.Tensor], target: torch.Tensor
) -> torch.Tensor:
    """nnU-Net's weighting: halve the weight at each coarser output, normalise to sum 1."""
    weights = [0.5**i for i in range(len(outputs))]
    total = 0.0
    for w, out in zip(weights, outputs, strict=True):
        t = (
            target
            if out.shape[-3:] == target.shape[-3:]
            else torch.nn.functional.interpolate(target, size=out.shape[-3:], mode="nearest")
        )
        total = total + w * loss(out, t)
    return total / sum(weights)
