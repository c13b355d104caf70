"""The seed network: the original Keras Sequential 3D CNN, layer for layer, computed by default
through an exact rewrite that gives the same logits and gradients with less work.

Layer names follow Keras' automatic names so `format_summary` reads like `model.summary()`.
Keras fuses the ReLU into each convolution layer; here it is applied in `forward`, so the layer
list and per-layer parameter counts match Keras exactly (996,673 in total).

The rewrite (`fast=True`) derives its kernels from the literal layers' parameters at every
forward, so autograd trains those parameters and checkpoints are the literal network's.
`fuse_seed` freezes the same kernels once into `SeedFast`, for inference without autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class FastKernels:
    """Weights and biases of the rewritten network, as consumed by `fast_forward`."""

    encoder: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    """The three 3x3x3 convolutions, unchanged."""
    bottleneck: tuple[torch.Tensor, torch.Tensor]
    """The first transposed convolution as a convolution."""
    up_1: tuple[torch.Tensor, torch.Tensor]
    """Upsample + second transposed convolution as one 2x2x2 conv with 8 * 64 phase channels."""
    up_2: tuple[torch.Tensor, torch.Tensor]
    """Upsample + third transposed convolution, 8 * 32 phase channels."""
    head: tuple[torch.Tensor, torch.Tensor]
    """The 1x1 output convolution on each of the 8 phases: a block-diagonal (8, 8 * 32) kernel.
    A dense conv with 8x the (tiny) work, because oneDNN's grouped 1x1 conv is far slower."""


def _transposed_as_conv(weight: torch.Tensor) -> torch.Tensor:
    """A stride-1 transposed convolution is a convolution with the kernel flipped in space and
    its in/out channels swapped; "same" padding stays 1 for a 3x3x3 kernel."""
    return weight.transpose(0, 1).flip(2, 3, 4)


def _phase_kernel(transposed_weight: torch.Tensor) -> torch.Tensor:
    """The 3x3x3 "same" convolution of a x2 nearest-upsampled input, as one 2x2x2 convolution at
    low resolution whose 8 * C_out channels are the 8 output phases (8/27 of the multiply-adds).

    With padding 1 the low-resolution output has size M + 1; phase (pd, ph, pw) is the window
    starting at (pd, ph, pw). The zero padding of the high-resolution input is exactly the zero
    padding at low resolution, because an out-of-range tap at high resolution is also one at low.
    Takes the transposed conv's (C_in, C_out, 3, 3, 3) weight: the flipped taps do the flip.
    """
    c_in, c_out = transposed_weight.shape[:2]
    a = _PHASE_TAPS.flip(-1).to(transposed_weight)
    k = torch.einsum("pat,qbu,rcv,iotuv->pqroiabc", a, a, a, transposed_weight)
    return k.reshape(8 * c_out, c_in, 2, 2, 2)


def seed_kernels(seed: SeedCNN) -> FastKernels:
    """The rewritten network's kernels as differentiable functions of `seed`'s parameters."""
    # Out of autocast: the kernels are sums of weights, kept in the parameters' precision
    # (the convolutions then cast them once, as they would cast the literal weights).
    with torch.autocast(seed.conv3d.weight.device.type, enabled=False):
        t0, t1, t2 = seed.conv3d_transpose, seed.conv3d_transpose_1, seed.conv3d_transpose_2
        head = seed.conv3d_3
        return FastKernels(
            encoder=tuple((m.weight, m.bias) for m in (seed.conv3d, seed.conv3d_1, seed.conv3d_2)),
            bottleneck=(_transposed_as_conv(t0.weight), t0.bias),
            up_1=(_phase_kernel(t1.weight), t1.bias.repeat(8)),
            up_2=(_phase_kernel(t2.weight), t2.bias.repeat(8)),
            head=(
                torch.block_diag(*[head.weight.reshape(1, -1)] * 8).reshape(8, -1, 1, 1, 1),
                head.bias.repeat(8),
            ),
        )


def _phase_windows(n_channels: int, m: tuple[int, ...]):
    """(output slices, phase-channel block slices) of each of the 8 phases."""
    for phase in range(8):
        pd, ph, pw = phase >> 2, (phase >> 1) & 1, phase & 1
        out = (slice(None), slice(None), slice(pd, None, 2), slice(ph, None, 2), slice(pw, None, 2))
        block = (
            slice(None),
            slice(phase * n_channels, (phase + 1) * n_channels),
            slice(pd, pd + m[0]),
            slice(ph, ph + m[1]),
            slice(pw, pw + m[2]),
        )
        yield out, block


def _layout(t: torch.Tensor) -> torch.memory_format:
    cl = t.shape[1] > 1 and t.is_contiguous(memory_format=torch.channels_last_3d)
    return torch.channels_last_3d if cl else torch.contiguous_format


class _Interleave(torch.autograd.Function):
    """Place the 8 phase windows of `y` (N, 8 * C, M+1, ...) into one (N, C, 2M, ...) tensor.

    A Function of its own because autograd through eight slices of `y` would build eight
    full-size zero gradients and add them; the backward here writes one.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, n_channels: int) -> torch.Tensor:
        m = tuple(s - 1 for s in y.shape[2:])
        ctx.y_shape, ctx.n_channels = y.shape, n_channels
        shape = (y.shape[0], n_channels, 2 * m[0], 2 * m[1], 2 * m[2])
        # Keep y's layout, so that each copy reads and writes memory in the same order.
        out = torch.empty(shape, dtype=y.dtype, device=y.device, memory_format=_layout(y))
        for o, b in _phase_windows(n_channels, m):
            out[o] = y[b]
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        m = tuple(s // 2 for s in grad.shape[2:])
        layout = _layout(grad)
        out = torch.empty(ctx.y_shape, dtype=grad.dtype, device=grad.device, memory_format=layout)
        out.zero_()  # the row of each block that no phase reads gets no gradient
        for o, b in _phase_windows(ctx.n_channels, m):
            out[b] = grad[o]
        return out, None


def _conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int = 0) -> torch.Tensor:
    # On the CPU, channels-last kernels make oneDNN keep every activation channels-last, which
    # trains ~1.5x faster than channels-first in bfloat16 (and in float32 from two samples up);
    # callers need not convert anything, since the network's input and output have one channel.
    if x.device.type == "cpu":
        w = w.contiguous(memory_format=torch.channels_last_3d)
        if _bf16(x) and min(x.shape[2:]) == w.shape[2] - 1:
            # oneDNN's bfloat16 weight gradient is garbage when the input depth is one less than
            # the kernel (torch 2.13; the literal layers have it too). Such inputs are tiny, so
            # float32 costs nothing there.
            with torch.autocast("cpu", enabled=False):
                return F.conv3d(x.float(), w.float(), b.float(), padding=padding).to(x.dtype)
    return F.conv3d(x, w, b, padding=padding)


def _bf16(x: torch.Tensor) -> bool:
    autocast = torch.is_autocast_enabled(x.device.type)
    return x.dtype == torch.bfloat16 or (
        autocast and torch.get_autocast_dtype(x.device.type) == torch.bfloat16
    )


def _max_pool(x: torch.Tensor) -> torch.Tensor:
    # CPU autocast runs max pooling in float32, which casts the largest activations there and
    # back; the max of bfloat16 values is exact in bfloat16.
    with torch.autocast(x.device.type, enabled=False):
        return F.max_pool3d(x, 2)


def _first_conv_pool(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """max_pool(conv(x)) for the one-channel input.

    PyTorch sends a float32 conv3d of one one-channel sample (N * C * D * H <= 20480, as for a
    128^3 patch) to its slow im2col path, which also writes the largest activation
    channels-first. Two half-depth slabs stacked on the batch axis take oneDNN's path instead:
    the same sums, ~2x faster with the pooling. The cut falls between pooling windows.
    """
    low_precision = x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(
        x.device.type
    )
    if x.device.type != "cpu" or x.shape[0] > 1 or low_precision:
        return _max_pool(_conv(x, w, b, padding=1))
    half = x.shape[2] // 2
    xp = F.pad(x, (1, 1, 1, 1, 1, 1))
    slabs = torch.cat([xp[:, :, : half + 2], xp[:, :, half:]]).to(
        memory_format=torch.channels_last_3d
    )
    y = _max_pool(_conv(slabs, w, b))  # (2, C, D/4, H/2, W/2), channels-last
    # Channels-last, the two slabs one after the other in memory are the whole volume: a view
    # (which, unlike a cat, also hands the pooling's backward a channels-last gradient).
    n, c, d, h, width = y.shape
    return y.permute(0, 2, 3, 4, 1).reshape(1, n * d, h, width, c).permute(0, 4, 1, 2, 3)


def fast_forward(x: torch.Tensor, k: FastKernels) -> torch.Tensor:
    """The seed network's logits through the rewrite.

    ReLU runs after max pooling (they commute, and it is 1/8 of the work); transposed convs are
    plain convs; each conv after an upsample runs at the lower resolution on the 8 output
    phases; the 1x1 output conv runs on those phases before the last upsample, since it commutes
    with nearest upsampling.
    """
    if x.device.type == "cpu":
        # Explicit channels-last strides: with one channel both layouts look alike, and only
        # these make oneDNN write the first (largest) activation channels-last.
        x = x.to(memory_format=torch.channels_last_3d)
    (w, b), *encoder = k.encoder
    x = F.relu(_first_conv_pool(x, w, b))
    for w, b in encoder:
        x = F.relu(_max_pool(_conv(x, w, b, padding=1)))
    x = F.relu(_conv(x, *k.bottleneck, padding=1))
    w, b = k.up_1
    x = F.relu(_Interleave.apply(_conv(x, w, b, padding=1), w.shape[0] // 8))
    w, b = k.up_2
    y = _conv(F.relu(_conv(x, w, b, padding=1)), *k.head)
    return F.interpolate(_Interleave.apply(y, 1), scale_factor=2.0, mode="nearest")


class SeedCNN(nn.Module):
    """The original Keras network in PyTorch: three conv+pool stages, three conv-transpose+upsample
    stages, a 1x1 output convolution. Returns logits; apply a sigmoid at inference.

    `fast` computes the same function (logits and gradients) through `fast_forward`, 2x
    faster to train and to predict on a CPU than the literal layers at their best layout
    (benchmarks/RESULTS.md); `fast=False` runs the layers literally, as Keras does.
    Parameters and state_dict are the same either way.
    """

    divisor = 8

    @staticmethod
    def size_divisor(**_options: object) -> int:
        """Three 2x poolings: spatial sizes must be multiples of 8."""
        return 8

    def __init__(self, init: Literal["keras", "torch"] = "keras", fast: bool = True) -> None:
        super().__init__()
        if init not in ("keras", "torch"):
            raise ConfigError(f"seed option init={init!r} is invalid; use 'keras' or 'torch'")
        if not isinstance(fast, bool):
            raise ConfigError(f"seed option fast={fast!r} is invalid; use true or false")
        self.fast = fast
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
        # The layer table (`model_summary`) hooks each layer on the meta device: literal path.
        if self.fast and x.device.type != "meta":
            return fast_forward(x, seed_kernels(self))
        x = self.max_pooling3d(F.relu(self.conv3d(x)))
        x = self.max_pooling3d_1(F.relu(self.conv3d_1(x)))
        x = self.max_pooling3d_2(F.relu(self.conv3d_2(x)))
        x = self.up_sampling3d(F.relu(self.conv3d_transpose(x)))
        x = self.up_sampling3d_1(F.relu(self.conv3d_transpose_1(x)))
        x = self.up_sampling3d_2(F.relu(self.conv3d_transpose_2(x)))
        return self.conv3d_3(x)


class SeedFast(nn.Module):
    """`fast_forward` with its kernels computed once from a SeedCNN: inference only, and a
    snapshot (fuse again after further training). Build it with `fuse_seed`."""

    divisor = 8

    def __init__(self, seed: SeedCNN) -> None:
        super().__init__()
        with torch.no_grad():
            k = seed_kernels(seed)
        pairs = {
            "conv3d": k.encoder[0],
            "conv3d_1": k.encoder[1],
            "conv3d_2": k.encoder[2],
            "bottleneck": k.bottleneck,
            "up_conv_1": k.up_1,
            "up_conv_2": k.up_2,
            "head": k.head,
        }
        for name, (w, b) in pairs.items():
            self.register_parameter(f"{name}_weight", nn.Parameter(w.clone(), requires_grad=False))
            self.register_parameter(f"{name}_bias", nn.Parameter(b.clone(), requires_grad=False))

    def kernels(self) -> FastKernels:
        p = dict(self.named_parameters())

        def pair(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            return p[f"{name}_weight"], p[f"{name}_bias"]

        return FastKernels(
            encoder=(pair("conv3d"), pair("conv3d_1"), pair("conv3d_2")),
            bottleneck=pair("bottleneck"),
            up_1=pair("up_conv_1"),
            up_2=pair("up_conv_2"),
            head=pair("head"),
        )

    def check_shape(self, shape: tuple[int, int, int]) -> None:
        """Raise InputError unless every spatial size is a multiple of `divisor`."""
        check_divisible(shape, self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x.shape, self.divisor)
        return fast_forward(x, self.kernels())


def fuse_seed(model: SeedCNN) -> SeedFast:
    """The exact faster inference form of a trained SeedCNN (same device, dtype and eval mode)."""
    if not isinstance(model, SeedCNN):
        raise ConfigError(f"fuse_seed needs a SeedCNN, got {type(model).__name__}")
    return SeedFast(model).eval()
