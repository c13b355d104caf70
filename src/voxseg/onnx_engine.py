"""Network-grid prediction with ONNX Runtime, without torch: the numbers of
`inference.predict_probabilities` from a model exported by `voxseg.export`.

The whole-volume and sliding-window logic is `voxseg.sliding`'s, shared with the torch engine;
this module loads the graph and calls it. Probabilities are the sigmoid of each output
channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from scipy.special import expit

from voxseg.errors import InputError
from voxseg.geometry import Shape3
from voxseg.sliding import predict_volume

INPUT_NAME = "image"
"""The exported graph's input, (N, 1, D, H, W) float32."""
OUTPUT_NAME = "logits"
"""Its output, (N, C, D, H, W) float32."""
DIVISOR_KEY = "voxseg.divisor"
"""ONNX metadata: JSON [d, h, w] that spatial sizes must be multiples of."""
WEIGHTS_KEY = "voxseg.weights_sha256"
"""SHA-256 of the model.safetensors the graph was exported from."""
MODEL_KEY = "voxseg.model"
"""The network's entry of the config.json it was exported with (name and options)."""


def model_key(model: dict) -> str:
    """The canonical text of a config's model entry ({"name": ..., "options": ...})."""
    return json.dumps(model, sort_keys=True)


@dataclass(frozen=True)
class OnnxModel:
    session: ort.InferenceSession
    divisor: Shape3
    """Spatial sizes the network accepts are multiples of this, per axis."""
    input_name: str
    output_name: str
    weights_sha256: str | None = None
    """Of the weights it was exported from (None: not recorded)."""
    model: str | None = None
    """`model_key` of the network it was exported from (None: not recorded)."""


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
    try:
        divisor = tuple(int(d) for d in json.loads(meta[DIVISOR_KEY]))
    except (ValueError, TypeError, RecursionError):
        divisor = ()
    if len(divisor) != 3 or min(divisor) < 1:
        raise InputError(
            f"{path}: its {DIVISOR_KEY} metadata {meta[DIVISOR_KEY][:40]!r} is not three "
            "positive sizes; export it again with `voxseg export`"
        )
    names = session.get_inputs()[0].name, session.get_outputs()[0].name
    return OnnxModel(
        session, divisor, *names, weights_sha256=meta.get(WEIGHTS_KEY), model=meta.get(MODEL_KEY)
    )


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
    `inference.predict_probabilities` computes them (the same `voxseg.sliding` around
    another network call).

    `window` is the sliding-window size (a multiple of the divisor); None runs the whole
    volume at once, padded to the model's size divisor.
    """
    if window is not None and any(w % k for w, k in zip(window, model.divisor, strict=True)):
        raise InputError(
            f"window {tuple(window)} is not a multiple of the model's divisor {model.divisor}; "
            "choose a window that is"
        )

    def network(block: np.ndarray) -> np.ndarray:
        (logits,) = model.session.run([model.output_name], {model.input_name: block[None, None]})
        return expit(logits[0])

    return predict_volume(
        network, net_input, divisor=model.divisor, window=window, overlap=overlap, tta=tta,
        pad_value=pad_value,
    )  # fmt: skip
