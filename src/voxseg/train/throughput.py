"""How fast this machine trains a model: voxels per second of real training steps.

One reading on a busy machine can be several times off, so the figure is the median of
several timed steps after a warm-up, and the readings are kept for the record. The plan
uses it only to size the first epoch; the time budget itself is kept by the clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from voxseg.config import ModelConfig
from voxseg.runtime import autocast, autocast_dtype

WARMUP_STEPS = 2
TIMED_STEPS = 5


@dataclass(frozen=True)
class Throughput:
    voxels_per_second: float
    """Median over the timed steps."""
    readings: tuple[float, ...]
    """Each timed step's voxels per second."""


def measure_throughput(
    model_cfg: ModelConfig, device: torch.device, precision: str, side: int = 48, batch: int = 2
) -> Throughput:
    from voxseg.models import build_model

    torch.manual_seed(0)
    model = build_model(model_cfg.name, **model_cfg.options).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = autocast_dtype(precision, device)
    x = torch.randn(batch, 1, side, side, side, device=device)
    readings = []
    for i in range(WARMUP_STEPS + TIMED_STEPS):
        t0 = time.perf_counter()
        with autocast(device, amp):
            out = model(x)
        out = out[0] if isinstance(out, list) else out
        out.float().mean().backward()
        opt.step()
        opt.zero_grad()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= WARMUP_STEPS:  # the first steps build kernels
            readings.append(batch * side**3 / (time.perf_counter() - t0))
    return Throughput(float(np.median(readings)), tuple(readings))
