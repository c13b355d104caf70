"""`voxseg.fit` for array users coming from the seed's Keras code.

Arrays are taken as already preprocessed (the network sees them as given), shaped like the
seed's: (N, D, H, W, 1) channels-last or (N, D, H, W).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from voxseg.config import DataConfig, ModelConfig, PreprocessConfig, RunConfig, TrainConfig
from voxseg.errors import InputError
from voxseg.geometry import Geometry, Reorientation
from voxseg.inference import predict_probabilities
from voxseg.preprocess import PreprocessRecord
from voxseg.run_folder import RunFolder, TrainState
from voxseg.runtime import autocast_dtype, resolve_device
from voxseg.train.loop import train
from voxseg.train.plan import seed_preset
from voxseg.train.prepared import PreparedCase, foreground_positions

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _volumes(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 5 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 4:
        raise InputError(f"{name}: expected (N, D, H, W, 1) or (N, D, H, W), got shape {x.shape}")
    return x


def _cases(x: np.ndarray, y: np.ndarray, prefix: str) -> list[PreparedCase]:
    x, y = _volumes(x, f"{prefix} images"), _volumes(y, f"{prefix} labels")
    if x.shape != y.shape:
        raise InputError(f"{prefix}: images {x.shape} and labels {y.shape} differ in shape")
    shape = tuple(int(s) for s in x.shape[1:])
    geometry = Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), _IDENTITY)
    record = PreprocessRecord(
        geometry, Reorientation.to_canonical(geometry), tuple((0, s) for s in shape), shape
    )
    out = []
    for i in range(len(x)):
        label = (y[i] > 0.5).astype(np.uint8)
        out.append(
            PreparedCase(
                f"{prefix}_{i}",
                x[i].astype(np.float32),
                label,
                foreground_positions(label),
                record,
            )
        )
    return out


@dataclass
class FittedModel:
    """A trained network plus the configuration and history that reproduce it."""

    model: nn.Module
    config: RunConfig
    state: TrainState
    device: torch.device
    _run_dir: Path

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities shaped (N, D, H, W, 1), like Keras's `model.predict` (one volume at a
        time, so memory stays that of one volume)."""
        volumes = _volumes(x, "x")
        amp = autocast_dtype(self.config.train.precision, self.device)
        probs = [
            predict_probabilities(
                self.model, v, window=self.config.infer.window, device=self.device, amp=amp
            )
            for v in volumes
        ]
        return np.moveaxis(np.stack(probs), 1, -1)  # channels last, as Keras

    def save(self, directory: str | Path) -> Path:
        """Write the same run folder files as `voxseg train` (weights, config, metrics, curves)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for f in self._run_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, directory / f.name)
        return directory

    @property
    def history(self):
        return self.state.history


def fit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    model: str = "seed",
    epochs: int = 20,
    batch_size: int = 4,
    patience: int = 3,
    lr: float = 1e-3,
    loss: str | None = None,
    seed: int = 0,
    device: str = "auto",
    max_minutes: float | None = None,
) -> FittedModel:
    """Train on arrays, Keras-style; early stopping on validation Dice restores the best weights."""
    from voxseg.models import build_model
    from voxseg.plots import plot_curves

    train_cases = _cases(x_train, y_train, "train")
    val_cases = _cases(*validation_data, "val") if validation_data is not None else []
    shape = train_cases[0].record.shape
    base = RunConfig(
        data=DataConfig(),
        preprocess=PreprocessConfig(
            mode="shape", shape=shape, hu_window=(-1e30, 1e30), mean=0.0, std=1.0, crop_body=False
        ),
    )
    if model == "seed":
        config = seed_preset(base)
        config = replace(config, preprocess=base.preprocess)
    else:
        config = replace(
            base, model=ModelConfig(name=model), train=TrainConfig(patch_size=None, augment="off")
        )
    config = replace(
        config,
        train=replace(
            config.train,
            epochs=epochs,
            batch_size=batch_size,
            patience=patience,
            lr=lr,
            seed=seed,
            max_minutes=max_minutes,
            loss=loss or config.train.loss,
        ),
    ).validate()  # the same ranges as the command line (lr > 0, batch >= 1, ...)
    dev = resolve_device(device)
    torch.manual_seed(seed)
    net = build_model(config.model.name, **config.model.options)
    net.check_shape(shape)
    net.to(dev)
    run = RunFolder(Path(tempfile.mkdtemp(prefix="voxseg-fit-")))
    run.save_config(config)
    state = train(net, config, train_cases, val_cases, run, device=dev)
    plot_curves(state.history, run.curves_path)
    net.eval()
    return FittedModel(net, config, state, dev, run.root)
