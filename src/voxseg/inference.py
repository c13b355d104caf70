"""Network-grid prediction with a torch module: whole volume (seed recipe) or Gaussian-weighted
sliding window (`voxseg.sliding`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from voxseg.geometry import Shape3
from voxseg.models.shape import per_axis
from voxseg.runtime import autocast
from voxseg.sliding import predict_volume


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
) -> np.ndarray:
    """Probabilities (C, D, H, W) float32 on the network grid of `net_input` (D, H, W), one
    channel per model output (C = 1 for a binary model).

    `window` is the sliding-window size; None runs the whole volume at once, padded to the
    model's size divisor. The window, padding and mirroring are `voxseg.sliding`'s, shared
    with the ONNX engine; only the network call is torch.
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    def network(block: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(block)[None, None].to(device)
        with autocast(device, amp):
            out = model(x)
        out = out[0] if isinstance(out, list | tuple) else out
        return torch.sigmoid(out.float())[0].cpu().numpy()

    divisor = per_axis(getattr(model, "divisor", 1))
    return predict_volume(
        network, net_input, divisor=divisor, window=window, overlap=overlap, tta=tta,
        pad_value=pad_value,
    )  # fmt: skip
