"""The resolved configuration of a run: frozen dataclasses saved as JSON beside every model.

This module is the single source of truth for every setting: its type, default, allowed
values and range. `RunConfig.load` checks a config.json as strictly as training checks the
command line, so a hand-edited `"optimizer": "sgdd"` is refused with one line naming the
field. Nothing in the file is ever executed; it is read with ``json`` only.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from voxseg.errors import ConfigError
from voxseg.regions import Region, check_regions, label_words

Triple = tuple[float, float, float]
IntTriple = tuple[int, int, int]
CONFIG_VERSION = 4
SEED_SHAPE: IntTriple = (128, 128, 128)
"""The original recipe's fixed input size, and the grid of whole-volume training by default."""

Check = Callable[[Any], str | None]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


def _positive(value: Any) -> str | None:
    values = value if isinstance(value, tuple) else (value,)
    return None if all(v > 0 for v in values) else "must be > 0"


def _non_negative(value: Any) -> str | None:
    values = value if isinstance(value, tuple) else (value,)
    return None if values and all(v >= 0 for v in values) else "must be >= 0"


def _fraction(value: Any) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def _probability(value: Any) -> str | None:
    return None if 0 <= value <= 1 else "must be in [0, 1]"


def _open_unit(value: Any) -> str | None:
    return None if 0 < value < 1 else "must be in (0, 1)"


def _ordered(value: Any) -> str | None:
    return None if value[0] < value[1] else "must be (low, high) with low < high"


def _checked(default: Any, check: Check, **kw: Any) -> Any:
    """A dataclass field whose value `check` validates (None means valid)."""
    return field(default=default, metadata={"check": check}, **kw)


@dataclass(frozen=True)
class DataConfig:
    foreground: tuple[int, ...] | None = _checked(None, _positive)
    """Label values that make the binary target; None means every non-zero label."""
    regions: tuple[tuple[int, ...], ...] = ()
    """Region-based training: label values of each region, outermost first (KiTS:
    ((1, 2), (2,))); the network gets one sigmoid output per region. Empty: binary target."""
    region_names: tuple[str, ...] = ()
    """One name per region (e.g. 'kidney+tumour', 'tumour')."""

    def targets(self) -> tuple[Region, ...]:
        """What the network's outputs segment: the regions, or the one binary target."""
        if self.regions:
            return tuple(Region(n, r) for n, r in zip(self.region_names, self.regions, strict=True))
        name = "foreground" if self.foreground is None else label_words(self.foreground)
        return (Region(name, self.foreground),)

    def check(self, source: str | None) -> None:
        if not self.regions:
            return
        where = source or "--regions"
        if self.foreground is not None:
            raise ConfigError(f"{where}: give --foreground or --regions, not both")
        if len(self.region_names) != len(self.regions):
            raise ConfigError(f"{where}: data.region_names must name each of data.regions")
        if any(not r or min(r) < 1 for r in self.regions):
            raise ConfigError(f"{where}: every region needs positive label values")
        check_regions(self.targets(), where)


@dataclass(frozen=True)
class PreprocessConfig:
    mode: Literal["shape", "spacing"] = "spacing"
    """Resample every case to a fixed `shape` (seed recipe) or to a target `spacing`."""
    shape: IntTriple | None = _checked(None, _positive)
    """Fixed canonical array shape (mode 'shape'), e.g. the seed's 128^3."""
    spacing: Triple | None = _checked(None, _positive)
    """Target voxel size in mm, canonical order (S, P, L) (mode 'spacing')."""
    hu_window: tuple[float, float] = _checked((-79.0, 304.0), _ordered)
    """HU values outside this window are clipped (kidney/tumour window of nnU-Net's KiTS plan)."""
    mean: float = 101.0
    """Subtracted after clipping (foreground mean in the planned recipe)."""
    std: float = _checked(76.9, _positive)
    """Divided by after subtracting the mean."""
    crop_body: bool = True
    """Crop to the body's bounding box (HU > -500) before resampling; undone exactly."""

    @property
    def pad_value(self) -> float:
        """Normalised value of the lowest HU in the window: what air looks like to the network."""
        return (self.hu_window[0] - self.mean) / self.std


@dataclass(frozen=True)
class ModelConfig:
    name: Literal["unet", "seed"] = "unet"
    """Registry name (`voxseg.models.MODEL_NAMES` holds the same names)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Keyword options of the model builder (widths, depth, deep supervision)."""


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _checked(200, _positive)
    """Upper bound on epochs; early stopping or `max_minutes` usually ends training first."""
    steps_per_epoch: int | None = _checked(None, _positive)
    """Optimizer steps per epoch; None means one pass over the training cases. With
    `max_minutes`, this is the first epoch's length and later epochs adapt so validation
    stays a bounded share of the time."""
    batch_size: int = _checked(2, _positive)
    lr: float = _checked(1e-3, _positive)
    weight_decay: float = _checked(1e-2, _non_negative)
    """Decoupled weight decay for adamw (PyTorch's default); L2 penalty for adam and sgd."""
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    schedule: Literal["constant", "cosine"] = "cosine"
    """Cosine decays over the epochs, or over the time budget when `max_minutes` is set."""
    loss: Literal["bce", "dice_bce"] = "dice_bce"
    batch_dice: bool = True
    """Dice over the whole batch (True) or per sample, then averaged (nnU-Net's 3D default):
    per sample, a small tumour weighs as much as a large one in the same batch."""
    patch_size: IntTriple | None = _checked(None, _positive)
    """Training patch (canonical order); None trains on whole resampled volumes."""
    foreground_oversample: float = _checked(0.5, _probability)
    """Fraction of patches centred on a foreground voxel (nnU-Net uses 1/3)."""
    augment: Literal["off", "light", "full"] = "light"
    """'light': left-right flips and intensity jitter; 'full': nnU-Net's kind (rotation and
    scaling, noise, blur, brightness, contrast, low resolution, gamma, mirroring)."""
    val_fraction: float = _checked(0.2, _fraction)
    val_cases: tuple[str, ...] = ()
    val_smoothing: float = _checked(0.0, _fraction)
    """Weight of the past in the moving average of validation Dice that picks the best
    model and drives early stopping (nnU-Net: 0.9); 0 uses each epoch's own Dice."""
    patience: int = _checked(10, _non_negative)
    """Epochs without a better validation Dice before stopping; 0 disables early stopping."""
    max_minutes: float | None = _checked(None, _positive)
    """Wall-clock budget; training ends at a step boundary with the best model saved."""
    seed: int = 0
    precision: Precision = "auto"
    """Autocast dtype; 'auto' picks bf16 on CPUs/GPUs that run it fast, else fp32."""


@dataclass(frozen=True)
class InferConfig:
    window: IntTriple | None = _checked(None, _positive)
    """Sliding-window size (canonical order); None predicts the whole volume at once."""
    overlap: float = _checked(0.25, _fraction)
    """Sliding-window overlap (fraction of the window)."""
    tta: bool = False
    """Mirror test-time augmentation."""
    keep_largest: tuple[int, ...] = _checked((0,), _non_negative)
    """Per output, keep only the N largest connected components (0: keep all); one value
    applies to every output."""
    threshold: float = _checked(0.5, _open_unit)


@dataclass(frozen=True)
class ModelCard:
    """What a receiver of the model needs to know; filled in when training ends."""

    command: str = ""
    """The command that trained it."""
    voxseg_version: str = ""
    torch_version: str = ""
    created: str = ""
    """When training ended (ISO 8601, local time with offset)."""
    data: str = ""
    """The training dataset's folder."""
    train_cases: int = 0
    val_cases: int = 0
    median_spacing: Triple | None = None
    """Of the training data, mm, canonical order (z y x)."""
    target: str = ""
    """What the model segments, in words."""
    val_dice: float | None = None
    """Mean validation Dice of the kept weights (None without validation)."""
    val_region_dice: tuple[float, ...] = ()
    """Per region (model output), the validation Dice of the kept weights."""
    epochs: int = 0
    trained_minutes: float = 0.0


SECTIONS = ("data", "preprocess", "model", "train", "infer", "card")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    card: ModelCard = field(default_factory=ModelCard)
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def validate(self, source: str | None = None, complete: bool = True) -> RunConfig:
        """Raise ConfigError naming the first invalid field; return self.

        `source` names the file the values came from; without it they came from options,
        and the message names the option (`--batch-size`). `complete` also requires what a
        trained model needs (the grid of its preprocessing mode).
        """
        for section in SECTIONS:
            value = getattr(self, section)
            for f in dataclasses.fields(value):
                check = f.metadata.get("check")
                v = getattr(value, f.name)
                problem = check(v) if check is not None and v is not None else None
                if problem:
                    raise _field_error(source, section, f.name, v, problem)
        self.data.check(source)
        p = self.preprocess
        if not complete:
            return self
        needed = "shape" if p.mode == "shape" else "spacing"
        if getattr(p, needed) is None:
            raise _field_error(source, "preprocess", needed, None, f"mode {p.mode!r} needs it")
        return self

    def override(
        self, changes: dict[str, Any], source: str | None = None, complete: bool = True
    ) -> RunConfig:
        """A copy with `changes` ({"train.lr": 0.01, ...}) applied, typed and validated.

        The one path from options to a configuration: a key that is not a field is an error.
        """
        sections = {name: {} for name in SECTIONS}
        for key, value in changes.items():
            section, _, name = key.partition(".")
            cls = type(getattr(self, section, None))
            if section not in sections or name not in {f.name for f in dataclasses.fields(cls)}:
                raise ConfigError(f"unknown setting {key!r}")
            sections[section][name] = _convert(
                typing.get_type_hints(cls)[name], value, source, section, name
            )
        return dataclasses.replace(
            self,
            **{s: dataclasses.replace(getattr(self, s), **c) for s, c in sections.items() if c},
        ).validate(source, complete)

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> RunConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source or 'configuration'}: not a JSON object")
        unknown = sorted(set(d) - {*SECTIONS, "version"})
        if unknown:
            raise ConfigError(f"{source or 'configuration'}: unknown section {unknown[0]!r}")
        sections = {}
        for name in SECTIONS:
            section_cls = typing.get_type_hints(cls)[name]
            sections[name] = _section(section_cls, d.get(name, {}), source, name)
        return cls(**sections, version=CONFIG_VERSION).validate(source)

    def save(self, path: Path) -> None:
        from voxseg.atomic import write_text

        write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """Read and validate a config.json; every problem is one line naming file and field."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"{path}: cannot read configuration ({exc}); retrain or restore it"
            ) from exc
        if not isinstance(d, dict) or d.get("version") not in (1, 2, 3, CONFIG_VERSION):
            raise ConfigError(f"{path}: not a voxseg v{CONFIG_VERSION} configuration")
        return cls.from_dict(_upgrade(d), source=str(path))


def _upgrade(d: dict) -> dict:
    """Version 1 borrowed the sliding window from the training patch and had num_workers;
    versions 1-2 had one keep_largest for the one output; versions 1-3 called the HU window
    `preprocess.window` (the sliding window is `infer.window`)."""
    if d.get("version") == CONFIG_VERSION:
        return d
    d = json.loads(json.dumps(d))
    train, infer = d.get("train", {}), d.setdefault("infer", {})
    pre = d.get("preprocess", {})
    if isinstance(pre, dict) and "window" in pre:
        pre["hu_window"] = pre.pop("window")
    if isinstance(infer, dict) and isinstance(infer.get("keep_largest"), int):
        infer["keep_largest"] = [infer["keep_largest"]]
    if d.get("version") == 1 and isinstance(train, dict):
        train.pop("num_workers", None)
        if isinstance(train.get("augment"), bool):
            train["augment"] = "light" if train["augment"] else "off"
        if isinstance(infer, dict):
            infer.setdefault("window", train.get("patch_size"))
    d["version"] = CONFIG_VERSION
    return d


TRAIN_OPTIONS: dict[str, str] = {
    "model": "model.name",
    "foreground": "data.foreground",
    "shape": "preprocess.shape",
    "spacing": "preprocess.spacing",
    **{
        name: f"train.{name}"
        for name in (
            *("epochs", "batch_size", "lr", "weight_decay", "loss", "batch_dice", "optimizer"),
            *("val_fraction", "val_cases", "patience", "max_minutes", "steps_per_epoch", "seed"),
            *("precision", "augment"),
        )
    },
}
"""`voxseg train` options (Python names) and the field each sets. The CLI declares no range
or choice of its own: `RunConfig.override` checks every value against its field."""


def train_overrides(given: dict[str, Any], regions: tuple[Region, ...] | None) -> dict[str, Any]:
    """{field: value} for the `voxseg train` options the user gave (None: not given); the
    one `--regions` option sets the regions' labels and names."""
    unknown = set(given) - set(TRAIN_OPTIONS)
    if unknown:
        raise KeyError(f"not train options: {sorted(unknown)}")
    changes = {TRAIN_OPTIONS[k]: v for k, v in given.items() if v is not None}
    if regions:
        changes["data.regions"] = tuple(r.labels for r in regions)
        changes["data.region_names"] = tuple(r.name for r in regions)
    return changes


_OFF_FLAGS = {("train", "batch_dice"): "--sample-dice"}
"""Boolean fields whose `voxseg train` flag for False is not --no-<name>."""


def option_name(section: str, name: str) -> str:
    """The `voxseg train` option that sets a field: train.batch_size -> --batch-size."""
    return "--model" if (section, name) == ("model", "name") else "--" + name.replace("_", "-")


def given_option(section: str, name: str, value: Any) -> str:
    """How the user spelled a setting: `--lr 0.5`, `--sample-dice`."""
    if value is False and (section, name) in _OFF_FLAGS:
        return _OFF_FLAGS[section, name]
    return f"{option_name(section, name)} {value!r}"


def _field_error(
    source: str | None, section: str, name: str, value: Any, problem: str
) -> ConfigError:
    if source is None:
        return ConfigError(f"{given_option(section, name, value)}: {problem}")
    return ConfigError(f'{source}: field "{section}.{name}" = {value!r}: {problem}')


def _section(cls: type, d: Any, source: str | None, section: str) -> Any:
    if not isinstance(d, dict):
        raise _field_error(source, section, "*", d, "must be a JSON object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise _field_error(source, section, unknown[0], d[unknown[0]], "unknown setting")
    return cls(**{k: _convert(hints[k], v, source, section, k) for k, v in d.items()})


def _convert(tp: Any, value: Any, source: str | None, section: str, name: str) -> Any:
    """`value` as type `tp`, or a ConfigError naming the field; never a silent coercion."""

    def fail(problem: str) -> ConfigError:
        return _field_error(source, section, name, value, problem)

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, source, section, name)
    if value is None:
        raise fail("must be set")
    if origin is Literal:
        if value not in args:
            raise fail(f"choose one of {', '.join(map(str, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise fail("must be a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, source, section, name) for v in value)
        if len(value) != len(args):
            raise fail(f"must have {len(args)} values")
        return tuple(
            _convert(a, v, source, section, name) for a, v in zip(args, value, strict=True)
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise fail("must be a JSON object")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("must be a whole number")
        return value
    if tp is float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise fail("must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("must be text")
        return value
    return value
