"""Levers on one training step of the planned default U-Net, each alone, at equal work.

Every variant trains the same network (the 10-minute CPU plan, or `--run`'s) on the same
batch; variants are interleaved round by round so a drift of the machine hits them all, and
each figure is the median step over the rounds. Ratios are to the recipe's own step.

- precision: fp32 against bf16 autocast (what `--precision auto` picks where the CPU
  reports AVX512-BF16 or AMX);
- memory format: channels-last 3D input (what the loop does on CPUs) against contiguous;
- torch.compile (inductor): its one-off compile time and its steady step;
- threads: torch's default against one thread fewer.

    .venv/bin/python benchmarks/bench_levers.py [--run RUN] [--rounds 5] [--compile]

Prints a table and writes benchmarks/results/levers.json. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_step import planned_config  # noqa: E402
from bench_train import machine_info, print_table  # noqa: E402


def make_step(config, precision: str, channels_last: bool, compiled: bool):
    """A closure running one optimizer step of a fresh copy of the planned network."""
    from voxseg.losses import build_loss
    from voxseg.models import build_model
    from voxseg.train.loop import GRAD_CLIP, build_optimizer

    tc = config.train
    torch.manual_seed(0)
    model = build_model(config.model.name, **config.model.options).train()
    net = torch.compile(model) if compiled else model
    optimizer = build_optimizer(model, tc)
    loss_fn = build_loss(tc.loss, tc.batch_dice)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((tc.batch_size, 1, *tc.patch_size), np.float32))
    regions = len(config.data.targets())
    y = torch.from_numpy(
        (rng.random((tc.batch_size, regions, *tc.patch_size)) > 0.9).astype(np.float32)
    )
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    dtype = torch.bfloat16 if precision == "bf16" else None

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = net(x)
        loss = loss_fn(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained run folder (default: the 10-minute plan)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also torch.compile (minutes)")
    args = p.parse_args()
    config = planned_config(args.run)
    threads = torch.get_num_threads()
    variants = {
        "bf16, channels-last": ("bf16", True, False, threads),
        "fp32, channels-last": ("fp32", True, False, threads),
        "bf16, contiguous": ("bf16", False, False, threads),
        "fp32, contiguous": ("fp32", False, False, threads),
    }
    if threads > 1:
        variants[f"bf16, channels-last, {threads - 1} thread(s)"] = (
            "bf16",
            True,
            False,
            threads - 1,
        )
    if args.compile:
        variants["bf16, channels-last, compiled"] = ("bf16", True, True, threads)
        variants["fp32, channels-last, compiled"] = ("fp32", True, True, threads)
    steps, first = {}, {}
    for name, (precision, cl, compiled, n) in variants.items():
        torch.set_num_threads(n)
        steps[name] = make_step(config, precision, cl, compiled)
        t0 = time.perf_counter()
        steps[name]()  # warm-up: oneDNN primitive creation, or the whole compile
        first[name] = time.perf_counter() - t0
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (_, _, _, n) in variants.items():
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            steps[name]()
            seconds[name].append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    base = statistics.median(seconds["bf16, channels-last"])
    voxels = config.train.batch_size * float(np.prod(config.train.patch_size))
    rows, record = [], {}
    for name in variants:
        s = statistics.median(seconds[name])
        rows.append([name, f"{s:.3f}", f"{voxels / s / 1e6:.2f}", f"{base / s:.2f}x",
                     f"{first[name]:.1f}"])  # fmt: skip
        record[name] = {"median_s": s, "all_s": seconds[name], "first_step_s": first[name]}
    tc = config.train
    print(f"patch {tc.patch_size} x batch {tc.batch_size}, {config.model.options}")
    print_table(["variant", "step s", "Mvoxel/s", "speed vs recipe", "first step s"], rows)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "levers.json"
    out.write_text(
        json.dumps(
            {
                "machine": machine_info(),
                "patch": list(tc.patch_size),
                "batch": tc.batch_size,
                "variants": record,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
