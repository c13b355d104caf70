"""A small residual 3D U-Net in the spirit of nnU-Net's ResEnc U-Net, the default model.

One residual block per resolution; the first convolution of each encoder block is strided
(strided-conv downsampling), the decoder upsamples with a transposed convolution of the same
stride and concatenates the skip connection. Strides and kernels may differ per axis, as in
nnU-Net for thick-slice CT: while the slices are much thicker than the pixels, the first
stages use 1x3x3 kernels and 1x2x2 strides, so 5 mm slices are not treated like 1.6 mm pixels
(`voxseg.train.plan.unet_topology` derives them from the spacing).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from voxseg.errors import ConfigError, InputError
from voxseg.models.shape import Divisor, check_divisible, check_input, per_axis

_SLOPE = 0.01
Triple = tuple[int, int, int]


def _topology(
    depth: int, strides: list[list[int]] | None, kernels: list[list[int]] | None
) -> tuple[list[Triple], list[Triple]]:
    """Per-level strides (depth of them) and kernels (depth + 1), checked; isotropic 2 and 3
    when not given."""
    s = [tuple(x) for x in strides] if strides is not None else [(2, 2, 2)] * depth
    k = [tuple(x) for x in kernels] if kernels is not None else [(3, 3, 3)] * (depth + 1)
    if len(s) != depth or any(len(x) != 3 or not set(x) <= {1, 2} for x in s):
        raise ConfigError(f"unet option strides={strides!r}: give {depth} triples of 1 or 2")
    if len(k) != depth + 1 or any(len(x) != 3 or not set(x) <= {1, 3} for x in k):
        raise ConfigError(f"unet option kernels={kernels!r}: give {depth + 1} triples of 1 or 3")
    return s, k


class ResBlock(nn.Module):
    """conv-norm-LeakyReLU, conv-norm, plus the (projected) input, then LeakyReLU."""

    def __init__(
        self, c_in: int, c_out: int, stride: Triple = (1, 1, 1), kernel: Triple = (3, 3, 3)
    ) -> None:
        super().__init__()
        pad = tuple(k // 2 for k in kernel)
        # No conv biases: instance norm subtracts the mean right after, and its affine adds one.
        self.conv1 = nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=pad, bias=False)
        self.norm1 = nn.InstanceNorm3d(c_out, affine=True)
        self.conv2 = nn.Conv3d(c_out, c_out, kernel, padding=pad, bias=False)
        self.norm2 = nn.InstanceNorm3d(c_out, affine=True)
        self.skip: nn.Module = nn.Identity()
        if c_in != c_out or tuple(stride) != (1, 1, 1):
            self.skip = nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _bf16_bug_risk(x, self.conv1.stride):
            # oneDNN's bfloat16 conv3d weight gradient is garbage when the input depth is one
            # less than the kernel (torch 2.13 on CPU): the deepest blocks of a small patch hit
            # it. Those tensors are tiny, so float32 costs nothing there.
            with torch.autocast(x.device.type, enabled=False):
                return self._forward(x.float())
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.norm1(self.conv1(x)), _SLOPE)
        y = self.norm2(self.conv2(y))
        return F.leaky_relu(y + self.skip(x), _SLOPE)


def _bf16_bug_risk(x: torch.Tensor, stride: tuple[int, ...]) -> bool:
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    small = min(min(n, n // s) for n, s in zip(x.shape[2:], stride, strict=True)) <= 2
    return small and torch.get_autocast_dtype("cpu") == torch.bfloat16


class UNet3D(nn.Module):
    """Residual U-Net with `depth` downsamplings; channels double per level up to `max_channels`.

    Returns logits (N, out_channels, D, H, W), one sigmoid output per region. With
    `deep_supervision` and in training mode it returns a
    list [full resolution, 1/2, 1/4, ...] with one entry per decoder level; in eval mode always
    the full-resolution tensor.
    """

    def __init__(
        self,
        base_channels: int = 16,
        depth: int = 4,
        max_channels: int = 256,
        deep_supervision: bool = False,
        strides: list[list[int]] | None = None,
        kernels: list[list[int]] | None = None,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (
            ("base_channels", base_channels),
            ("depth", depth),
            ("out_channels", out_channels),
        ):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"unet option {name}={value!r} must be a positive integer")
        strides_, kernels_ = _topology(depth, strides, kernels)
        if not isinstance(max_channels, int) or max_channels < base_channels:
            raise ConfigError(
                f"unet option max_channels={max_channels!r} must be an integer >= "
                f"base_channels ({base_channels})"
            )
        self.divisor = self.size_divisor(depth=depth, strides=strides)
        self.deep_supervision = bool(deep_supervision)
        widths = [min(base_channels * 2**level, max_channels) for level in range(depth + 1)]

        self.stem = ResBlock(1, widths[0], kernel=kernels_[0])
        self.encoder = nn.ModuleList(
            ResBlock(widths[i], widths[i + 1], stride=strides_[i], kernel=kernels_[i + 1])
            for i in range(depth)
        )
        # Decoder modules run from the deepest level up to full resolution.
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(widths[i + 1], widths[i], strides_[i], stride=strides_[i])
            for i in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(
            ResBlock(2 * widths[i], widths[i], kernel=kernels_[i]) for i in reversed(range(depth))
        )
        # heads[k] reads the decoder output at 1/2**k resolution; only heads[0] without deep
        # supervision, so that every parameter is used in every training step.
        n_heads = depth if self.deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv3d(widths[k], out_channels, 1) for k in range(n_heads))

        for m in self.modules():
            if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(m.weight, a=_SLOPE)  # nnU-Net's choice for LeakyReLU
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def size_divisor(
        depth: int = 4, strides: list[list[int]] | None = None, **_options: object
    ) -> Divisor:
        """Spatial sizes must be multiples of this: the product of the strides, per axis."""
        if strides is None:
            return 2**depth
        return tuple(math.prod(s[a] for s in strides) for a in range(3))

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        """Raise InputError unless every size is a multiple of `divisor` and at least twice it
        (instance norm at the bottleneck needs more than one voxel to train)."""
        check_divisible(shape, self.divisor)
        least = tuple(2 * d for d in per_axis(self.divisor))
        if any(s < m for s, m in zip(shape, least, strict=True)):
            raise InputError(
                f"input size {tuple(shape)} is too small for a depth-{len(self.encoder)} U-Net; "
                f"use at least {least} (or a smaller depth)"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input(x.shape, self.divisor)
        x = self.stem(x)
        skips = []
        for block in self.encoder:
            skips.append(x)
            x = block(x)
        levels = []
        for up, block, skip in zip(self.upsample, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
            levels.append(x)
        levels.reverse()  # full resolution first
        if self.deep_supervision and self.training:
            return [head(level) for head, level in zip(self.heads, levels, strict=False)]
        return self.heads[0](levels[0])
