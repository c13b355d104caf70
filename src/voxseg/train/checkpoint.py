"""Checkpoints without pickle: weights and optimizer tensors in safetensors, the rest in JSON.

Every file is written atomically and its SHA-256 recorded in the run's `state.json`, so a
truncated or corrupted file is detected on load instead of silently resuming from garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from voxseg.atomic import atomic_path, write_text
from voxseg.errors import ConfigError

_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save zip archive, raw pickle protocol 2+


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Atomic safetensors write; returns the file's SHA-256."""
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    return sha256(path)


def load_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; refuse pickles and files whose hash does not match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint; check the run folder")
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head.startswith(_PICKLE_MAGIC):
        raise ConfigError(
            f"{path}: holds a pickle (torch.save), which can run code when loaded; voxseg only "
            "loads safetensors: convert it with safetensors.torch.save_file in a trusted session"
        )
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise ConfigError(f"{path}: checksum mismatch (truncated or modified file)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{path}: not a valid safetensors file ({exc}); retrain or re-download it"
        ) from exc


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_model(path: Path, model: nn.Module) -> str:
    return save_tensors(path, unwrap(model).state_dict())


def load_model_weights(path: Path, model: nn.Module, expected_sha256: str | None = None) -> None:
    tensors = load_tensors(path, expected_sha256)
    try:
        unwrap(model).load_state_dict(tensors)
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: weights do not fit the model in config.json ({str(exc).splitlines()[0]})"
        ) from exc


def optimizer_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and plain values (JSON)."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for pid, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{name}"] = value
            else:
                plain["state"].setdefault(str(pid), {})[name] = value
    return tensors, plain


def restore_optimizer(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], plain: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in plain.get("state", {}).items():
        state.setdefault(int(pid), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2) + "\n")


def previous(path: Path) -> Path:
    """Where the copy before the latest write lives: `last.safetensors` -> `last.prev...`."""
    return path.with_name(path.name.replace(path.suffix, f".prev{path.suffix}"))


def rotate(path: Path) -> None:
    """Keep the current file as the previous copy before it is replaced."""
    if path.exists():
        os.replace(path, previous(path))


def find_intact(path: Path, expected_sha256: str) -> Path | None:
    """The file, or its previous copy, whose SHA-256 is the one recorded; None if neither."""
    for candidate in (path, previous(path)):
        if candidate.is_file() and sha256(candidate) == expected_sha256:
            return candidate
    return None
