"""Model registry. Every model maps (N, 1, D, H, W) float input to (N, 1, D, H, W) logits
(apply a sigmoid at inference), has a `divisor` that spatial sizes must be multiples of, and a
`check_shape(shape)` that raises InputError naming the nearest valid sizes."""

from __future__ import annotations

import inspect

from torch import nn

from voxseg.errors import ConfigError
from voxseg.models.seed_cnn import SeedCNN, SeedFast, fuse_seed
from voxseg.models.unet3d import UNet3D

_REGISTRY: dict[str, type[nn.Module]] = {"unet": UNet3D, "seed": SeedCNN}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""Names `build_model` accepts; the first is the default."""

__all__ = [
    "MODEL_NAMES",
    "SeedCNN",
    "SeedFast",
    "UNet3D",
    "build_model",
    "fuse_seed",
    "size_divisor",
]


def size_divisor(name: str, **options: object) -> int:
    """What the model's spatial input sizes must be multiples of, without building it."""
    return _model_class(name).size_divisor(**options)


def _model_class(name: str) -> type[nn.Module]:
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    return _REGISTRY[name]


def build_model(name: str, **options: object) -> nn.Module:
    """Build the registered model `name` with keyword `options` (see each class's __init__)."""
    cls = _model_class(name)
    valid = tuple(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    return cls(**options)
