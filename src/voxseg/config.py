"""The resolved configuration of a run: frozen dataclasses saved as JSON beside every model.

Inference rebuilds the model and replays the preprocessing from this file alone; nothing in it
is ever executed, and it is read with ``json`` only.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from voxseg.errors import ConfigError

Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]
CONFIG_VERSION = 1


@dataclass(frozen=True)
class DataConfig:
    foreground: tuple[int, ...] | None = None
    """Label values that make the binary target; None means every non-zero label."""


@dataclass(frozen=True)
class PreprocessConfig:
    mode: Literal["shape", "spacing"] = "spacing"
    """Resample every case to a fixed `shape` (seed recipe) or to a target `spacing`."""
    shape: IntTriple | None = None
    """Fixed canonical array shape (mode 'shape'), e.g. the seed's 128^3."""
    spacing: Triple | None = None
    """Target voxel size in mm, canonical order (S, P, L) (mode 'spacing')."""
    window: tuple[float, float] = (-79.0, 304.0)
    """HU values outside this window are clipped (kidney/tumour window of nnU-Net's KiTS plan)."""
    mean: float = 101.0
    """Subtracted after clipping (foreground mean in the planned recipe)."""
    std: float = 76.9
    """Divided by after subtracting the mean."""
    crop_body: bool = True
    """Crop to the body's bounding box (HU > -500) before resampling; undone exactly."""


@dataclass(frozen=True)
class ModelConfig:
    name: str = "unet"
    """Registry name (`voxseg.models.MODEL_NAMES`)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the model builder (widths, depth, deep supervision)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 200
    """Upper bound on epochs; early stopping or `max_minutes` usually ends training first."""
    steps_per_epoch: int | None = None
    """Optimizer steps per epoch; None means one pass over the training cases."""
    batch_size: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    schedule: Literal["constant", "cosine"] = "cosine"
    loss: Literal["bce", "dice_bce"] = "dice_bce"
    patch_size: IntTriple | None = None
    """Training patch (canonical order); None trains on whole resampled volumes."""
    foreground_oversample: float = 0.5
    """Fraction of patches centred on a foreground voxel (nnU-Net uses 1/3)."""
    augment: bool = True
    """Random flips along the left-right axis and intensity jitter."""
    val_fraction: float = 0.2
    val_cases: tuple[str, ...] = ()
    patience: int = 10
    """Epochs without a better validation Dice before stopping; 0 disables early stopping."""
    max_minutes: float | None = None
    """Wall-clock budget; training ends at a step boundary with the best model saved."""
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast dtype; 'auto' picks bf16 on CPUs/GPUs that run it fast, else fp32."""
    num_workers: int = 0


@dataclass(frozen=True)
class InferConfig:
    overlap: float = 0.25
    """Sliding-window overlap (fraction of the patch)."""
    tta: bool = False
    """Mirror test-time augmentation."""
    keep_largest: int = 0
    """Keep only the N largest connected components (0: keep all)."""
    threshold: float = 0.5


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> RunConfig:
        """Raise ConfigError for a value outside its Literal choices; return self."""
        for section in (self.data, self.preprocess, self.model, self.train, self.infer):
            hints = typing.get_type_hints(type(section))
            for f in dataclasses.fields(section):
                choices = (
                    typing.get_args(hints[f.name])
                    if typing.get_origin(hints[f.name]) is Literal
                    else ()
                )
                value = getattr(section, f.name)
                if choices and value not in choices:
                    option = f.name.replace("_", "-")
                    raise ConfigError(f"--{option} {value!r}: choose one of {', '.join(choices)}")
        return self

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        return _from_dict(cls, d)

    def save(self, path: Path) -> None:
        from voxseg.atomic import write_text

        write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"{path}: cannot read configuration ({exc}); retrain or restore it"
            ) from exc
        if not isinstance(d, dict) or d.get("version") != CONFIG_VERSION:
            raise ConfigError(f"{path}: not a voxseg v{CONFIG_VERSION} configuration")
        return cls.from_dict(d)


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
    if tp is float:
        return float(value)
    if tp is int:
        return int(value)
    return value


def _from_dict(cls: type, d: dict) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {sorted(unknown)}")
    return cls(**{k: _convert(hints[k], v) for k, v in d.items()})
