"""Tensors on disk without pickle: safetensors files, written atomically, checked by SHA-256.

The run folder records each file's hash, so a truncated or corrupted file is detected on load
instead of silently used; the previous copy of a file is kept beside it until the next write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path

import torch
from torch import nn

from voxseg.atomic import atomic_path, short_write, write_error
from voxseg.errors import ConfigError, VoxsegError


def is_pickle(head: bytes) -> bool:
    """True for a torch.save zip archive or a raw pickle (protocol 2+), never for safetensors.

    A safetensors file starts with its header length (8 bytes, little endian) followed by the
    JSON header's `{`; its first byte can be anything, 0x80 included, so it is checked first.
    """
    if len(head) >= 9 and head[8:9] == b"{":
        (length,) = struct.unpack("<Q", head[:8])
        if 2 <= length < 100_000_000:
            return False
    return head.startswith(b"PK\x03\x04") or (
        len(head) >= 2 and head[0] == 0x80 and head[1] in (2, 3, 4, 5)
    )


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    """Atomic safetensors write; returns the file's SHA-256.

    A failed write (full disk, a file-size limit) raises one VoxsegError naming `path`.
    """
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(path, suffix=".safetensors") as tmp:
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        except SafetensorError as exc:
            raise _safetensors_error(path, exc) from exc
        _check_complete(tmp, path)
    return sha256(path)


def _safetensors_error(path: Path, exc: Exception) -> VoxsegError:
    """One line from safetensors' Rust error text, e.g. `Error while serializing: I/O error:
    File too large (os error 27)`: the OS message and its errno."""
    found = re.search(r"([^:]+) \(os error (\d+)\)", str(exc))
    if found is None:
        return write_error(path, (str(exc).splitlines() or [type(exc).__name__])[0])
    return write_error(path, found.group(1).strip(), int(found.group(2)))


def _check_complete(tmp: Path, path: Path) -> None:
    """The file holds exactly its header and every tensor's bytes: the SHA-256 recorded next
    would otherwise vouch for a cut-off file."""
    size = tmp.stat().st_size
    with open(tmp, "rb") as fh:
        head = fh.read(8)
        (length,) = struct.unpack("<Q", head) if len(head) == 8 else (size,)
        try:
            header = json.loads(fh.read(length))
        except (ValueError, MemoryError):
            header = None
    if not isinstance(header, dict):
        raise write_error(path, short_write(tmp.parent))
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if size != 8 + length + max(ends, default=0):
        raise write_error(path, short_write(tmp.parent))


def load_tensors(path: Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a safetensors file; refuse pickles and files whose hash does not match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint; check the run folder")
    with open(path, "rb") as fh:
        head = fh.read(9)
    if is_pickle(head):
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
    """Weights into `model`; refused when they cannot be a trained network's (a NaN predicts
    all background, integer tensors nonsense), whether or not a checksum covers the file."""
    tensors = load_tensors(path, expected_sha256)
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise ConfigError(
                f"{path}: tensor {name!r} is {str(t.dtype).removeprefix('torch.')}, not floating "
                "point; these are not voxseg weights: retrain or restore the run"
            )
        if not bool(torch.isfinite(t).all()):
            raise ConfigError(
                f"{path}: tensor {name!r} holds NaN or infinite values (training diverged, or "
                "the file is damaged); retrain or restore the run"
            )
    try:
        unwrap(model).load_state_dict(tensors)
    except RuntimeError as exc:
        raise ConfigError(
            f"{path}: weights do not fit the model in config.json ({str(exc).splitlines()[0]})"
        ) from exc


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
