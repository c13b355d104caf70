"""The input-size rule every model shares: spatial sizes must be multiples of `divisor`."""

from __future__ import annotations

from voxseg.errors import InputError

Divisor = int | tuple[int, int, int]
"""One size multiple for every axis, or one per axis (anisotropic strides)."""


def per_axis(divisor: Divisor) -> tuple[int, int, int]:
    return (divisor,) * 3 if isinstance(divisor, int) else tuple(int(d) for d in divisor)


def check_divisible(shape: tuple[int, ...], divisor: Divisor) -> None:
    """Raise InputError naming the nearest valid sizes unless `shape` is a multiple of `divisor`."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise InputError(f"expected a 3D spatial size (D, H, W), got {shape}")
    if min(shape) <= 0:
        raise InputError(f"input size {shape} must be positive in every axis")
    d = per_axis(divisor)
    if all(s % k == 0 for s, k in zip(shape, d, strict=True)):
        return
    down = tuple(s // k * k for s, k in zip(shape, d, strict=True))
    up = tuple(-(-s // k) * k for s, k in zip(shape, d, strict=True))
    # Rounding down to 0 would be no volume at all, so offer only the padded size then.
    options = f"{up}" if min(down) == 0 else f"{down} or {up}"
    raise InputError(
        f"input size {shape} is not divisible by {divisor}; use {options}, or let prediction pad"
    )


def check_input(x_shape: tuple[int, ...], divisor: Divisor) -> None:
    """Check a (N, 1, D, H, W) batch shape: one input channel and divisible spatial sizes."""
    if len(x_shape) != 5 or x_shape[1] != 1:
        raise InputError(f"expected input of shape (N, 1, D, H, W), got {tuple(x_shape)}")
    check_divisible(tuple(x_shape[2:]), divisor)
