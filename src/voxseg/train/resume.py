"""Save and restore everything training needs to continue exactly: weights, optimizer, RNG.

Optimizer tensors go to safetensors and its plain values to state.json (never pickle); the
run folder decides file names, rotation and hashes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from voxseg import weights
from voxseg.run_folder import RunFolder, TrainState


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


def save_checkpoint(
    run: RunFolder, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState
) -> None:
    tensors, plain = optimizer_tensors(optimizer)
    tensors["rng.torch"] = torch.get_rng_state()
    run.save_checkpoint(model, tensors, plain, state)


def load_checkpoint(
    run: RunFolder, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[TrainState, str]:
    """Restore the newest intact checkpoint; the note says when it fell back to an older one."""
    point = run.latest_checkpoint()
    weights.load_model_weights(point.last, model)
    tensors = weights.load_tensors(point.optimizer)
    torch.set_rng_state(tensors.pop("rng.torch"))
    restore_optimizer(optimizer, tensors, point.optimizer_values)
    return point.state, point.note
