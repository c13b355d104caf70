"""Process-group helpers for torchrun (DDP). Nothing home-made: torchrun sets the environment."""

from __future__ import annotations

import os


def world_from_env() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def shard_from_env() -> tuple[int, int]:
    """Prediction shard of this process: every world-size-th case starting at its rank."""
    return world_from_env()
