"""Network-grid prediction: whole volume (seed recipe) or Gaussian-weighted sliding window."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from voxseg.geometry import Shape3
from voxseg.models.shape import Divisor, per_axis
from voxseg.runtime import autocast


def _pad_to_multiple(
    x: torch.Tensor, divisor: Divisor, value: float
) -> tuple[torch.Tensor, tuple[int, ...]]:
    shape = x.shape[-3:]
    target = [-(-s // k) * k for s, k in zip(shape, per_axis(divisor), strict=True)]
    pad = []
    for s, t in zip(reversed(shape), reversed(target), strict=True):
        pad += [0, t - s]
    return torch.nn.functional.pad(x, pad, value=value), tuple(shape)


def _flips(tta: bool) -> Sequence[tuple[int, ...]]:
    return [(), (2,), (3,), (4,)] if tta else [()]


@torch.inference_mode()
def predict_probabilities(
    model: nn.Module,
    net_input: np.ndarray,
    *,
    window: Shape3 | None,
    overlap: float = 0.25,
    tta: bool = False,
    device: torch.device | str = "cpu",
    amp: torch.dtype | None = None,
    pad_value: float = 0.0,
    sw_batch_size: int = 1,
) -> np.ndarray:
    """Probabilities (C, D, H, W) float32 on the network grid of `net_input` (D, H, W), one
    channel per model output (C = 1 for a binary model).

    `window` is the sliding-window size; None runs the whole volume at once, padded to the
    model's size divisor.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    x = torch.from_numpy(np.array(net_input, dtype=np.float32))[None, None].to(
        device
    )  # copy: memmaps are read-only
    divisor = getattr(model, "divisor", 1)

    def logits(t: torch.Tensor) -> torch.Tensor:
        with autocast(device, amp):
            out = model(t)
        return (out[0] if isinstance(out, list | tuple) else out).float()

    total = None
    for dims in _flips(tta):
        xi = torch.flip(x, dims) if dims else x
        if window is None:
            padded, shape = _pad_to_multiple(xi, divisor, pad_value)
            prob = torch.sigmoid(logits(padded))[..., : shape[0], : shape[1], : shape[2]]
        else:
            from monai.inferers import sliding_window_inference

            prob = sliding_window_inference(
                xi,
                roi_size=tuple(window),
                sw_batch_size=sw_batch_size,
                predictor=lambda t: torch.sigmoid(logits(t)),
                overlap=overlap,
                mode="gaussian",
                padding_mode="constant",
                cval=pad_value,
            )
        prob = torch.flip(prob, dims) if dims else prob
        total = prob if total is None else total + prob
    return (total / len(_flips(tta)))[0].cpu().numpy()
