"""Network-grid prediction with ONNX Runtime, without torch: the numbers of
`inference.predict_probabilities` from a model exported by `voxseg.export`.

Whole volume (padded at the end to the model's size divisor) or MONAI's Gaussian-weighted
sliding window, replayed in numpy: the same window positions, importance map, padding of a
volume smaller than the window and normalisation as `monai.inferers.sliding_window_inference`
with mode="gaussian", sigma_scale 0.125, constant padding. Probabilities are the sigmoid of
each output channel; test-time augmentation averages the mirrored predictions.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy.special import expit

from voxseg.errors import InputError
from voxseg.geometry import Shape3

INPUT_NAME = "image"
"""The exported graph's input, (N, 1, D, H, W) float32."""
OUTPUT_NAME = "logits"
"""Its output, (N, C, D, H, W) float32."""
DIVISOR_KEY = "voxseg.divisor"
WEIGHTS_KEY = "voxseg.weights_sha256"
"""SHA-256 of the model.safetensors the graph was exported from."""
"""ONNX metadata: JSON [d, h, w] that spatial sizes must be multiples of."""
SIGMA_SCALE = 0.125
MIN_WEIGHT = 1e-3
"""MONAI clamps the importance map to at least this (or its minimum, if larger)."""


@dataclass(frozen=True)
class OnnxModel:
    session: ort.InferenceSession
    divisor: Shape3
    """Spatial sizes the network accepts are multiples of this, per axis."""
    input_name: str
    output_name: str
    weights_sha256: str | None = None
    """Of the weights it was exported from (None: not recorded)."""


def load_onnx(path: str | Path) -> OnnxModel:
    """An exported model.onnx on the CPU, with the divisor `voxseg.export` recorded in it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ONNX model; make one with `voxseg export`")
    # ORT's default threads (one per physical core) measured the same as os.cpu_count() on 2
    # cores (0.28 s per 96x80x80 U-Net window either way), and with another process busy on
    # one core they stay at the one-thread time: no setting to tune.
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own, unexported exception types
        raise InputError(f"{path}: not a readable ONNX model ({exc}); export it again") from None
    meta = session.get_modelmeta().custom_metadata_map
    if DIVISOR_KEY not in meta:
        raise InputError(
            f"{path}: no {DIVISOR_KEY} in its metadata; export it with `voxseg export`"
        )
    divisor = tuple(int(d) for d in json.loads(meta[DIVISOR_KEY]))
    names = session.get_inputs()[0].name, session.get_outputs()[0].name
    return OnnxModel(session, divisor, *names, weights_sha256=meta.get(WEIGHTS_KEY))


def _probabilities(model: OnnxModel, volume: np.ndarray) -> np.ndarray:
    """(D, H, W) -> sigmoid of the logits, (C, D, H, W) float32."""
    batch = np.ascontiguousarray(volume, dtype=np.float32)[None, None]
    (logits,) = model.session.run([model.output_name], {model.input_name: batch})
    return expit(logits[0])


def _whole(model: OnnxModel, volume: np.ndarray, pad_value: float) -> np.ndarray:
    shape = volume.shape
    after = [-(-s // k) * k - s for s, k in zip(shape, model.divisor, strict=True)]
    padded = np.pad(volume, [(0, a) for a in after], constant_values=pad_value)
    return _probabilities(model, padded)[:, : shape[0], : shape[1], : shape[2]]


def importance_map(window: Shape3) -> np.ndarray:
    """MONAI's Gaussian importance map (sigma = 0.125 x window), float32, with its floor."""
    weights = np.ones((), dtype=np.float32)
    for n in window:
        x = np.arange(n, dtype=np.float32) - np.float32((n - 1) / 2)
        g = np.exp(x**2 / np.float32(-2 * (SIGMA_SCALE * n) ** 2))
        weights = weights[..., None] * g
    return np.maximum(weights, np.float32(max(float(weights.min()), MIN_WEIGHT)))


def window_starts(size: int, window: int, overlap: float) -> list[int]:
    """MONAI's window starts along one axis of `size` >= `window` voxels (dense_patch_slices):
    a step of window x (1 - overlap), the last window moved back to end at the border."""
    step = window if window == size else max(int(window * (1 - overlap)), 1)
    count = next((i + 1 for i in range(math.ceil(size / step)) if i * step + window >= size), 1)
    return [min(i * step, size - window) for i in range(count)]


def _sliding(
    model: OnnxModel, volume: np.ndarray, window: Shape3, overlap: float, pad_value: float
) -> np.ndarray:
    # A volume smaller than the window is padded around (half before, the rest after).
    before = [max(w - s, 0) // 2 for s, w in zip(volume.shape, window, strict=True)]
    pad = [(b, max(w - s, 0) - b) for b, s, w in zip(before, volume.shape, window, strict=True)]
    padded = np.pad(volume, pad, constant_values=pad_value)
    weights = importance_map(window)
    starts = [window_starts(s, w, overlap) for s, w in zip(padded.shape, window, strict=True)]
    total = count = None
    for corner in itertools.product(*starts):
        box = tuple(slice(c, c + w) for c, w in zip(corner, window, strict=True))
        prob = _probabilities(model, padded[box])
        if total is None:
            total = np.zeros((prob.shape[0], *padded.shape), dtype=np.float32)
            count = np.zeros(padded.shape, dtype=np.float32)
        prob *= weights
        total[(slice(None), *box)] += prob
        count[box] += weights
    total /= count
    inside = tuple(slice(b, b + s) for b, s in zip(before, volume.shape, strict=True))
    return total[(slice(None), *inside)]


def _flips(tta: bool) -> list[tuple[int, ...]]:
    return [(), (0,), (1,), (2,)] if tta else [()]


def predict_probabilities_onnx(
    model: OnnxModel,
    net_input: np.ndarray,
    *,
    window: Shape3 | None,
    overlap: float = 0.25,
    tta: bool = False,
    pad_value: float = 0.0,
) -> np.ndarray:
    """Probabilities (C, D, H, W) float32 on the network grid of `net_input` (D, H, W), as
    `inference.predict_probabilities` computes them.

    `window` is the sliding-window size (a multiple of the divisor); None runs the whole
    volume at once, padded to the model's size divisor.
    """
    if window is not None and any(w % k for w, k in zip(window, model.divisor, strict=True)):
        raise InputError(
            f"window {tuple(window)} is not a multiple of the model's divisor {model.divisor}; "
            "choose a window that is"
        )
    volume = np.asarray(net_input, dtype=np.float32)
    total = None
    for axes in _flips(tta):
        flipped = np.flip(volume, axes) if axes else volume
        if window is None:
            prob = _whole(model, flipped, pad_value)
        else:
            prob = _sliding(model, flipped, tuple(window), overlap, pad_value)
        prob = np.flip(prob, tuple(a + 1 for a in axes)) if axes else prob
        total = prob if total is None else total + prob
    return np.ascontiguousarray(total / np.float32(len(_flips(tta))), dtype=np.float32)
