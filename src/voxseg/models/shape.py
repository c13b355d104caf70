"""The input-size rule every model shares: spatial sizes must be multiples of `divisor`."""

from __future__ import annotations

from voxseg.errors import InputError


def check_divisible(shape: tuple[int, ...], divisor: int) -> None:
    """Raise InputError naming the nearest valid sizes unless `shape` is a multiple of `divisor`."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3:
        raise InputError(f"expected a 3D spatial size (D, H, W), got {shape}")
    if min(shape) <= 0:
        raise InputError(f"input size {shape} must be positive in every axis")
    if all(s % divisor == 0 for s in shape):
        return
    down = tuple(s // divisor * divisor for s in shape)
    up = tuple(-(-s // divisor) * divisor for s in shape)
    # Rounding down to 0 would be no volume at all, so offer only the padded size then.
    options = f"{up}" if min(down) == 0 else f"{down} or {up}"
    raise InputError(
        f"input size {shape} is not divisible by {divisor}; use {options}, or let prediction pad"
    )


def check_input(x_shape: tuple[int, ...], divisor: int) -> None:
    """Check a (N, 1, D, H, W) batch shape: one input channel and divisible spatial sizes."""
    if len(x_shape) != 5 or x_shape[1] != 1:
        raise InputError(f"expected input of shape (N, 1, D, H, W), got {tuple(x_shape)}")
    check_divisible(tuple(x_shape[2:]), divisor)
