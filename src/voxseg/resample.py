"""Trilinear resize in numpy, equal to torch's F.interpolate (linear and bilinear,
align_corners=False, with or without antialias) to float32 rounding, without torch.

Preprocessing resamples with it for both engines: the ONNX Runtime engine runs where torch is
not installed, so it cannot resample through F.interpolate. The weights are torch's, computed
in float32 as ATen computes them; the sums differ from torch's only in their order of
rounding (about 1e-7 relative).

Each axis is one 1-D operator (`Taps`): output i = sum_k weight[i, k] * input[index[i, k]].
Along the first two axes it runs as a few multiply-adds of whole rows or planes per output
index (memory-bound, no temporaries beyond one plane); along the last axis, where that would
gather single floats, as banded matrix products, one plane per BLAS call. Chunks and planes
are shared among a few threads; on 2 cores it runs at 1-1.6x torch's time when quiet and at
0.6-1x with another process on one core.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

Shape3 = tuple[int, int, int]
_F32 = np.float32
_BAND = 32
"""Outputs per block of the last-axis matrix product: its input span stays ~2x the taps'."""
Band = tuple[slice, slice, np.ndarray]
"""Output block, the input span it reads, and the (span, block) transposed weights."""
_WORKERS = min(os.cpu_count() or 1, 4)
"""Threads that share the chunks and planes; beyond 4 the memory-bound passes gain little,
and each thread holds a chunk."""


@dataclass(frozen=True)
class Taps:
    """A 1-D resampling operator along one axis."""

    index: np.ndarray
    """(n_out, K) int64: the input positions each output reads."""
    weight: np.ndarray
    """(n_out, K) float32: their weights (0 where an output reads fewer than K inputs)."""
    n_in: int

    @property
    def n_out(self) -> int:
        return self.index.shape[0]

    def matrix(self) -> np.ndarray:
        """The dense (n_out, n_in) float32 matrix of this operator."""
        m = np.zeros((self.n_out, self.n_in), dtype=_F32)
        rows = np.arange(self.n_out)
        for k in range(self.index.shape[1]):
            np.add.at(m, (rows, self.index[:, k]), self.weight[:, k])
        return m


def linear_taps(n_in: int, n_out: int) -> Taps:
    """Torch's linear weights (align_corners=False, no antialias), float32 as ATen has them.

    ATen evaluates `scale * (i + 0.5) - 0.5` with one rounding (a fused multiply-add), hence
    the float64 product rounded once to float32.
    """
    scale = _F32(n_in) / _F32(n_out)
    src = (np.float64(scale) * (np.arange(n_out) + 0.5) - 0.5).astype(_F32)
    src = np.maximum(src, _F32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(_F32), _F32(0), _F32(1))
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return Taps(np.stack([i0, i1], 1), np.stack([_F32(1) - lam, lam], 1), n_in)


def antialias_taps(n_in: int, n_out: int) -> Taps:
    """Torch's antialiased linear weights: a triangle filter whose support grows with the
    shrink factor, normalised to sum 1 (ATen `_compute_indices_min_size_weights_aa`)."""
    scale = _F32(n_in) / _F32(n_out)
    support = _F32(np.float64(scale)) if scale >= 1 else _F32(1.0)
    invscale = _F32(1.0 / np.float64(scale)) if scale >= 1 else _F32(1.0)
    k = int(np.ceil(support)) * 2 + 1
    index = np.zeros((n_out, k), dtype=np.int64)
    weight = np.zeros((n_out, k), dtype=_F32)
    for i in range(n_out):
        center = _F32(np.float64(scale) * (i + 0.5))
        # C++ int casts truncate towards zero; the float + 0.5 sums are done in double there.
        xmin = max(int(np.float64(center - support) + 0.5), 0)
        xsize = min(max(min(int(np.float64(center + support) + 0.5), n_in) - xmin, 0), k)
        j = np.arange(xmin, xmin + xsize)
        x = np.abs(((j.astype(_F32) - center).astype(np.float64) + 0.5) * invscale).astype(_F32)
        w = np.where(x < 1, (1.0 - x.astype(np.float64)).astype(_F32), _F32(0))
        total = _F32(0)
        for v in w:  # ATen's running float32 sum, in its order
            total = _F32(total + v)
        index[i] = xmin
        index[i, :xsize] = j
        weight[i, :xsize] = w / total if total != 0 else w
    return Taps(index, weight, n_in)


def _taps(n_in: int, n_out: int, antialias: bool) -> Taps:
    return antialias_taps(n_in, n_out) if antialias else linear_taps(n_in, n_out)


def _store(out: np.ndarray, index, values: np.ndarray, threshold: float | None) -> None:
    if threshold is None:
        out[index] = values
    else:
        np.greater_equal(values, threshold, out=out[index])


def _along(
    x: np.ndarray,
    axis: int,
    taps: Taps,
    out: np.ndarray,
    threshold: float | None = None,
    outputs: range | None = None,
) -> None:
    """Resample axis 0 or 1 of `x` into `out` (the `outputs` indices of it, all by default):
    per output index, a few multiply-adds of the rows or planes it reads, accumulated in
    float32 in the order torch adds them."""
    lead = (slice(None),) * axis
    acc = np.empty(x.shape[:axis] + x.shape[axis + 1 :], dtype=_F32)
    tmp = np.empty_like(acc)
    for i in outputs if outputs is not None else range(taps.n_out):
        np.multiply(x[(*lead, taps.index[i, 0])], taps.weight[i, 0], out=acc, dtype=_F32)
        for j, w in zip(taps.index[i, 1:], taps.weight[i, 1:], strict=True):
            if w != 0:
                np.multiply(x[(*lead, j)], w, out=tmp, dtype=_F32)
                acc += tmp
        _store(out, (*lead, i), acc, threshold)


def _along_axis0(
    x: np.ndarray, taps: Taps, out: np.ndarray, threshold: float | None = None
) -> None:
    """`_along` axis 0, its output planes shared among the threads."""
    bounds = np.linspace(0, taps.n_out, _WORKERS + 1).astype(int)
    parts = [range(a, b) for a, b in itertools.pairwise(bounds) if b > a]
    _in_threads(lambda part: _along(x, 0, taps, out, threshold, part), parts)


def _in_threads(work: Callable[[Any], None], items: Sequence[Any]) -> None:
    """`work(item)` for every item, in _WORKERS threads (numpy releases the GIL)."""
    if _WORKERS == 1 or len(items) < 2:
        for item in items:
            work(item)
        return
    with ThreadPoolExecutor(_WORKERS) as pool:
        list(pool.map(work, items))  # list(): raise the first error here


def _bands(taps: Taps) -> list[Band]:
    """The operator as dense blocks of _BAND outputs, each over the inputs it reads."""
    m = taps.matrix()
    bands = []
    for start in range(0, taps.n_out, _BAND):
        rows = slice(start, min(start + _BAND, taps.n_out))
        used = np.flatnonzero(m[rows].any(axis=0))
        span = slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 1)
        bands.append((rows, span, np.ascontiguousarray(m[rows, span].T)))
    return bands


def _along_last(x: np.ndarray, bands: list[Band], out: np.ndarray) -> None:
    """Resample the last axis of a contiguous (planes, rows, n_in) chunk into `out` with
    banded products, one plane per BLAS call: products that small run on one thread, so a
    busy machine cannot stall BLAS's spinning workers (one (planes x rows) product ran 8x
    slower with another process on one of two cores)."""
    for cols, span, block in bands:
        out[..., cols] = x[..., span] @ block


def _resize_axes12(
    x: np.ndarray,
    size: tuple[int, int],
    out: np.ndarray,
    chunk: int,
    antialias: bool,
    threshold: float | None = None,
) -> None:
    """Bilinear resize of axes 1-2 (width first, as torch does), chunked over axis 0.

    Torch antialiases both axes when either shrinks (preprocess passes `antialias and shrink`).
    """
    h_in, w_in = x.shape[1:]
    aa = antialias and (size[0] < h_in or size[1] < w_in)
    h_taps, w_bands = _taps(h_in, size[0], aa), _bands(_taps(w_in, size[1], aa))

    def run(start: int) -> None:
        block = np.ascontiguousarray(x[start : start + chunk], dtype=_F32)
        if w_in != size[1]:
            wide = np.empty((*block.shape[:2], size[1]), dtype=_F32)
            _along_last(block, w_bands, wide)
            block = wide
        target = out[start : start + chunk]
        if h_in != size[0]:
            _along(block, 1, h_taps, target, threshold)
        else:
            _store(target, slice(None), block, threshold)

    _in_threads(run, range(0, x.shape[0], chunk))


def resize(
    array: np.ndarray,
    shape: Shape3,
    *,
    antialias: bool = False,
    chunk: int = 16,
    threshold: float | None = None,
) -> np.ndarray:
    """Trilinear resize (align_corners=False) to `shape`, float32, with bounded memory: the
    values of PyTorch's F.interpolate (bilinear over axes 1-2, linear along axis 0) to float32
    rounding; preprocessing uses it for both engines.

    With `threshold`, the result is a bool mask (value >= threshold) made plane by plane.
    Axis 0 is never antialiased; the pass order is the same, so the
    float32 intermediate is the smaller of the two possible ones.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(array.shape) == shape:
        same = np.asarray(array, dtype=_F32)
        return same if threshold is None else same >= threshold
    d, h, w = array.shape
    out = np.empty(shape, dtype=_F32 if threshold is None else bool)
    depth = linear_taps(d, shape[0])
    if shape[0] == d:
        _resize_axes12(array, shape[1:], out, chunk, antialias, threshold)
    elif shape[1:] == (h, w):
        _along_axis0(array, depth, out, threshold)
    elif shape[0] * h * w <= d * shape[1] * shape[2]:
        mid = np.empty((shape[0], h, w), dtype=_F32)
        _along_axis0(array, depth, mid)
        _resize_axes12(mid, shape[1:], out, chunk, antialias, threshold)
    else:
        mid = np.empty((d, *shape[1:]), dtype=_F32)
        _resize_axes12(array, shape[1:], mid, chunk, antialias)
        _along_axis0(mid, depth, out, threshold)
    return out
