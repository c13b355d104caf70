"""torchrun / DistributedDataParallel plumbing. Nothing home-made: torchrun starts the processes
and sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; this module only reads them, joins the
process group (gloo on CPU, NCCL on CUDA) and offers the few collectives the loop needs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

COLLECTIVE_TIMEOUT = timedelta(minutes=10)
"""A collective that waits longer than this fails instead of hanging forever."""


def world_from_env() -> tuple[int, int]:
    """(rank, world size) as torchrun sets them; (0, 1) when not launched by torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def init_from_env(device: torch.device) -> DistContext:
    """Join the process group torchrun prepared (a no-op for a single process)."""
    rank, world = world_from_env()
    if world <= 1:
        return DistContext(0, 1, device)
    import torch.distributed as dist

    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return DistContext(rank, world, device)


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.active:
        import torch.distributed as dist

        dist.barrier()


def all_sum(ctx: DistContext, values: np.ndarray) -> np.ndarray:
    """Element-wise sum over ranks (float64 on CPU; moved to the device for NCCL)."""
    if not ctx.active:
        return values
    import torch.distributed as dist

    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.cpu().numpy()


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
