"""The seed network: the original Keras Sequential 3D CNN, layer for layer, and an exact rewrite
of it (`fuse_seed`) that gives the same logits with less work, for inference.

Layer names follow Keras' automatic names so `format_summary` reads like `model.summary()`.
Keras fuses the ReLU into each convolution layer; here it is applied in `forward`, so the layer
list and per-layer parameter counts match Keras exactly (996,673 in total).
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from voxseg.errors import ConfigError
from voxseg.models.shape import check_divisible, check_input

# How the three taps (-1, 0, +1) of a "same" 3-tap filter applied to a nearest-upsampled (x2)
# signal fall on the low-resolution signal. Even output 2m reads x[m-1], x[m], x[m]; odd output
# 2m+1 reads x[m], x[m], x[m+1]. Indexed [phase, low-res tap, high-res tap]; with padding 1 the
# low-res taps are (m-1, m) for phase 0 and (m, m+1) for phase 1.
_PHASE_TAPS = torch.tensor(
    [
        [[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]],
        [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]],
    ],
    dtype=torch.float64,
)


class SeedCNN(nn.Module):
    """The original Keras network in PyTorch: three conv+pool stages, three conv-transpose+upsample
    stages, a 1x1 output convolution. Returns logits; apply a sigmoid at inference."""

    divisor = 8

    def __init__(self, init: Literal["keras", "torch"] = "keras") -> None:
        super().__init__()
        if init not in ("keras", "torch"):
            raise ConfigError(f"seed option init={init!r} is invalid; use 'keras' or 'torch'")
        self.conv3d = nn.Conv3d(1, 32, 3, padding=1)
        self.max_pooling3d = nn.MaxPool3d(2)
        self.conv3d_1 = nn.Conv3d(32, 64, 3, padding=1)
        self.max_pooling3d_1 = nn.MaxPool3d(2)
        self.conv3d_2 = nn.Conv3d(64, 128, 3, padding=1)
        self.max_pooling3d_2 = nn.MaxPool3d(2)
        self.conv3d_transpose = nn.ConvTranspose3d(128, 128, 3, stride=1, padding=1)
        self.up_sampling3d = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv3d_transpose_1 = nn.ConvTranspose3d(128, 64, 3, stride=1, padding=1)
        self.up_sampling3d_1 = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv3d_transpose_2 = nn.ConvTranspose3d(64, 32, 3, stride=1, padding=1)
        self.up_sampling3d_2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv3d_3 = nn.Conv3d(32, 1, 1)
        if init == "keras":
            # Keras' defaults, glorot_uniform kernels and zero biases. PyTorch's xavier_uniform_
            # uses the same limit sqrt(6 / (fan_in + fan_out)) for both conv weight layouts.
            for m in self.modules():
                if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        """Raise InputError unless every spatial size is a multiple of `divisor`."""
        check_divisible(shape, self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.divisor)
        x = self.max_pooling3d(F.relu(self.conv3d(x)))
        x = self.max_pooling3d_1(F.relu(self.conv3d_1(x)))
        x = self.max_pooling3d_2(F.relu(self.conv3d_2(x)))
        x = self.up_sampling3d(F.relu(self.conv3d_transpose(x)))
        x = self.up_sampling3d_1(F.relu(self.conv3d_transpose_1(x)))
        x = self.up_sampling3d_2(F.relu(self.conv3d_transpose_2(x)))
        return self.conv3d_3(x)


def _transpose_to_conv(layer: nn.ConvTranspose3d) -> nn.Conv3d:
    """A stride-1 transposed convolution is a convolution with the kernel flipped in space and its
    in/out channels swapped; the padding becomes k - 1 - p."""
    k = layer.kernel_size[0]
    conv = nn.Conv3d(layer.out_channels, layer.in_channels, k, padding=k - 1 - layer.padding[0])
    conv.weight.data = layer.weight.detach().transpose(0, 1).flip(2, 3, 4).contiguous()
    conv.bias.data = layer.bias.detach().clone()
    return conv


def _phase_conv(weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv3d:
    """The 3x3x3 "same" convolution of a x2 nearest-upsampled input, as one 2x2x2 convolution at
    low resolution whose 8 * C_out channels are the 8 output phases (8/27 of the multiply-adds).

    With padding 1 the low-resolution output has size M + 1; phase (pd, ph, pw) is the window
    starting at (pd, ph, pw). The zero padding of the high-resolution input is exactly the zero
    padding at low resolution, because an out-of-range tap at high resolution is also one at low.
    """
    c_out, c_in = weight.shape[:2]
    a = _PHASE_TAPS
    k = torch.einsum("pat,qbu,rcv,oituv->pqroiabc", a, a, a, weight.double())
    conv = nn.Conv3d(c_in, 8 * c_out, 2, padding=1)
    conv.weight.data = k.reshape(8 * c_out, c_in, 2, 2, 2).to(weight.dtype).contiguous()
    conv.bias.data = bias.detach().repeat(8)
    return conv


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last_3d)


def _interleave(y: torch.Tensor, channels: int) -> torch.Tensor:
    """Place the 8 phase windows of `y` (N, 8 * C, M+1, ...) into one (N, C, 2M, ...) tensor."""
    n = y.shape[0]
    m = tuple(s - 1 for s in y.shape[2:])
    # Keep y's layout, so that the copy reads and writes memory in the same order.
    layout = torch.channels_last_3d if _is_channels_last(y) else torch.contiguous_format
    out = torch.empty(
        (n, channels, 2 * m[0], 2 * m[1], 2 * m[2]),
        dtype=y.dtype,
        device=y.device,
        memory_format=layout,
    )
    for phase in range(8):
        pd, ph, pw = phase >> 2, (phase >> 1) & 1, phase & 1
        out[:, :, pd::2, ph::2, pw::2] = y[
            :,
            phase * channels : (phase + 1) * channels,
            pd : pd + m[0],
            ph : ph + m[1],
            pw : pw + m[2],
        ]
    return out


class SeedFast(nn.Module):
    """SeedCNN rewritten for inference, same logits up to rounding. Build it with `fuse_seed`.

    Rewrites: ReLU runs after max pooling (they commute, and it is 1/8 of the work); transposed
    convs become plain convs; each conv after an upsample runs at the lower resolution on the 8
    output phases; the 1x1 output conv runs on those phases (a grouped conv) before the last
    upsample, since it commutes with nearest upsampling. The weights are a snapshot: fuse again
    after further training.
    """

    divisor = 8

    def __init__(self, seed: SeedCNN) -> None:
        super().__init__()
        self.conv3d = copy.deepcopy(seed.conv3d)
        self.conv3d_1 = copy.deepcopy(seed.conv3d_1)
        self.conv3d_2 = copy.deepcopy(seed.conv3d_2)
        self.conv3d_transpose = _transpose_to_conv(seed.conv3d_transpose)
        up1 = _transpose_to_conv(seed.conv3d_transpose_1)
        self.up_conv_1 = _phase_conv(up1.weight, up1.bias)
        up2 = _transpose_to_conv(seed.conv3d_transpose_2)
        self.up_conv_2 = _phase_conv(up2.weight, up2.bias)
        head = seed.conv3d_3
        self.head = nn.Conv3d(8 * head.in_channels, 8, 1, groups=8)
        self.head.weight.data = head.weight.detach().repeat(8, 1, 1, 1, 1)
        self.head.bias.data = head.bias.detach().repeat(8)

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        """Raise InputError unless every spatial size is a multiple of `divisor`."""
        check_divisible(shape, self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.divisor)
        x = F.relu(F.max_pool3d(self.conv3d(x), 2))
        x = F.relu(F.max_pool3d(self.conv3d_1(x), 2))
        x = F.relu(F.max_pool3d(self.conv3d_2(x), 2))
        x = F.relu(self.conv3d_transpose(x))
        x = F.relu(_interleave(self.up_conv_1(x), self.up_conv_1.out_channels // 8))
        y = self.head(F.relu(self.up_conv_2(x)))
        return F.interpolate(_interleave(y, 1), scale_factor=2.0, mode="nearest")


def fuse_seed(model: SeedCNN) -> SeedFast:
    """The exact faster inference form of a trained SeedCNN (same device, dtype and eval mode)."""
    if not isinstance(model, SeedCNN):
        raise ConfigError(f"fuse_seed needs a SeedCNN, got {type(model).__name__}")
    w = model.conv3d.weight
    return SeedFast(model).to(device=w.device, dtype=w.dtype).eval()
