"""A small residual 3D U-Net in the spirit of nnU-Net's ResEnc U-Net, the default model.

One residual block per resolution; the first convolution of each encoder block has stride 2
(strided-conv downsampling), the decoder upsamples with a stride-2 transposed convolution and
concatenates the skip connection. Kernels are isotropic 3x3x3: the data are resampled before
training, and anisotropic kernels or pooling would be the next step for thick-slice CT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from voxseg.errors import ConfigError, InputError
from voxseg.models.shape import check_divisible, check_input

_SLOPE = 0.01


class ResBlock(nn.Module):
    """conv-norm-LeakyReLU, conv-norm, plus the (projected) input, then LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        # No conv biases: instance norm subtracts the mean right after, and its affine adds one.
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.InstanceNorm3d(c_out, affine=True)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.InstanceNorm3d(c_out, affine=True)
        self.skip: nn.Module = nn.Identity()
        if c_in != c_out or stride != 1:
            self.skip = nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _bf16_bug_risk(x, self.conv1.stride[0]):
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


def _bf16_bug_risk(x: torch.Tensor, stride: int) -> bool:
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return False
    small = min(min(x.shape[2:]), min(x.shape[2:]) // stride) <= 2
    return small and torch.get_autocast_dtype("cpu") == torch.bfloat16


class UNet3D(nn.Module):
    """Residual U-Net with `depth` downsamplings; channels double per level up to `max_channels`.

    Returns logits (N, 1, D, H, W). With `deep_supervision` and in training mode it returns a
    list [full resolution, 1/2, 1/4, ...] with one entry per decoder level; in eval mode always
    the full-resolution tensor.
    """

    def __init__(
        self,
        base_channels: int = 16,
        depth: int = 4,
        max_channels: int = 256,
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("base_channels", base_channels), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"unet option {name}={value!r} must be a positive integer")
        if not isinstance(max_channels, int) or max_channels < base_channels:
            raise ConfigError(
                f"unet option max_channels={max_channels!r} must be an integer >= "
                f"base_channels ({base_channels})"
            )
        self.divisor = self.size_divisor(depth=depth)
        self.deep_supervision = bool(deep_supervision)
        widths = [min(base_channels * 2**level, max_channels) for level in range(depth + 1)]

        self.stem = ResBlock(1, widths[0])
        self.encoder = nn.ModuleList(
            ResBlock(widths[i], widths[i + 1], stride=2) for i in range(depth)
        )
        # Decoder modules run from the deepest level up to full resolution.
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2)
            for i in reversed(range(depth))
        )
        self.decoder = nn.ModuleList(
            ResBlock(2 * widths[i], widths[i]) for i in reversed(range(depth))
        )
        # heads[k] reads the decoder output at 1/2**k resolution; only heads[0] without deep
        # supervision, so that every parameter is used in every training step.
        n_heads = depth if self.deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv3d(widths[k], 1, 1) for k in range(n_heads))

        for m in self.modules():
            if isinstance(m, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(m.weight, a=_SLOPE)  # nnU-Net's choice for LeakyReLU
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @staticmethod
    def size_divisor(depth: int = 4, **_options: object) -> int:
        """Spatial sizes must be multiples of this (one halving per level)."""
        return 2**depth

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        """Raise InputError unless every size is a multiple of `divisor` and at least twice it
        (instance norm at the bottleneck needs more than one voxel to train)."""
        check_divisible(shape, self.divisor)
        if min(shape) < 2 * self.divisor:
            raise InputError(
                f"input size {tuple(shape)} is too small for a depth-{len(self.encoder)} U-Net; "
                f"use at least {2 * self.divisor} per axis (or a smaller depth)"
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
