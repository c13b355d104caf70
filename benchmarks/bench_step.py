"""The limit of one training step of the planned default U-Net, measured on this machine.

1. FLOPs of one step (forward + backward, the planned patch and batch), counted by torch's
   FlopCounterMode (convolutions and matmuls: everything else is memory-bound).
2. This CPU's attainable rate for the same convolution shapes: every convolution of the
   network timed alone (forward + backward, channels-last, fp32 and bf16), and one
   compute-dense convolution (the best case of the kind).
3. The real step (`train.loop.train_step`, with the precision the plan picks) timed, its share
   of the attainable rate, and a per-stage profile of where its time goes (torch.profiler,
   self time grouped: convolutions, normalisation, activations, memory traffic, optimizer,
   loss), plus the data pipeline's time per batch (sampling + augmentation) measured apart.

    .venv/bin/python benchmarks/bench_step.py                  # the 10-minute CPU plan
    .venv/bin/python benchmarks/bench_step.py --run RUN        # a trained run's network

Prints tables and writes benchmarks/results/step.json. Figures are only as quiet as the
machine: run it alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_train import machine_info, print_table  # noqa: E402

STAGES = (  # first match wins: (stage, substrings of aten op names)
    ("convolution", ("conv",)),
    ("normalisation", ("norm", "var_mean", "rsqrt")),
    ("activation", ("leaky_relu", "relu", "sigmoid", "threshold")),
    ("optimizer", ("_foreach", "adam", "sgd", "lerp", "addcdiv", "addcmul", "sqrt", "clamp")),
    ("loss", ("binary_cross_entropy", "log_sigmoid", "softplus")),
    ("memory traffic", ("copy", "to_copy", "contiguous", "cat", "fill", "zero", "clone",
                        "empty", "as_strided", "pad", "reshape", "view", "permute")),
)  # fmt: skip


def planned_config(run: Path | None):
    """The run's config, or the plan a 10-minute CPU run makes for 32 KiTS-like cases
    (80 x 250 x 250 voxels at 4 x 1.6 x 1.6 mm, as `make_kits_like.py` paints them)."""
    from voxseg.config import RunConfig
    from voxseg.train.fingerprint import Fingerprint, Intensity
    from voxseg.train.plan import plan_default

    if run is not None:
        return RunConfig.load(run / "config.json")
    fp = Fingerprint(
        tuple(f"c{i}" for i in range(32)),
        ((80, 250, 250),) * 32,
        ((4.0, 1.6, 1.6),) * 32,
        Intensity(-8.0, 216.0, 107.0, 47.0),
    )
    return plan_default(fp, voxels_per_second=1e6, max_minutes=10, device_class="cpu").config


def timed(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up call."""
    fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def conv_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[nn.Module, tuple[int, ...]]]:
    """Every convolution of the network with the input shape it sees in a forward pass."""
    found = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: found.append((mod, tuple(inp[0].shape))))
        for m in model.modules()
        if isinstance(m, nn.Conv3d | nn.ConvTranspose3d)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return found


def conv_alone(
    conv: nn.Module, shape, dtype: torch.dtype | None, repeats: int
) -> tuple[int, float]:
    """(FLOPs, seconds) of forward + backward of one convolution alone, channels-last
    (`dtype`: the autocast dtype, None for fp32)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(shape).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    c = conv.float()

    def run():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            out = c(x)
        out.float().sum().backward()

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return counter.get_total_flops(), timed(run, repeats)


def profile_step(step, steps: int) -> dict[str, float]:
    """Self CPU seconds per stage over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    by_stage: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        name = event.key.lower()
        if not name.startswith("aten::"):
            continue
        stage = next((s for s, keys in STAGES if any(k in name for k in keys)), "other")
        by_stage[stage] += event.self_cpu_time_total / 1e6 / steps
    return dict(by_stage)


def main() -> None:
    from voxseg.losses import build_loss
    from voxseg.models import build_model
    from voxseg.runtime import autocast_dtype
    from voxseg.train.loop import build_optimizer, train_step
    from voxseg.train.sampler import Batch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, help="a trained run folder (default: the 10-minute plan)")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    config = planned_config(args.run)
    tc = config.train
    device = torch.device("cpu")
    amp = autocast_dtype(tc.precision, device)
    torch.manual_seed(0)
    model = build_model(config.model.name, **config.model.options).train()
    shape = (tc.batch_size, 1, *tc.patch_size)
    regions = len(config.data.targets())
    rng = np.random.default_rng(0)
    batch = Batch(
        rng.standard_normal(shape).astype(np.float32),
        (rng.random((tc.batch_size, regions, *tc.patch_size)) > 0.9).astype(np.float32),
    )
    loss_fn = build_loss(tc.loss, tc.batch_dice)
    optimizer = build_optimizer(model, tc)
    scaler = torch.amp.GradScaler("cpu", enabled=False)

    x = torch.from_numpy(batch.image).contiguous(memory_format=torch.channels_last_3d)
    flops = step_flops(model, x, torch.from_numpy(batch.label), loss_fn)

    def step():
        train_step(model, optimizer, loss_fn, batch, device, amp, tc.lr, scaler)

    step_s = timed(step, args.repeats)
    stages = profile_step(step, 3)

    # The data pipeline apart: what one batch costs the sampler with the recipe's augmentation.
    data_s = data_seconds(config, args.repeats)

    rows, per_conv = [], []
    totals = {"fp32": [0, 0.0], "bf16": [0, 0.0]}
    for conv, in_shape in conv_shapes(model, x):
        entry = {"layer": str(conv), "input": list(in_shape)}
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            f, s = conv_alone(conv, in_shape, dtype, args.repeats)
            totals[name][0] += f
            totals[name][1] += s
            entry[name] = {"flops": f, "seconds": s, "gflops_per_s": f / s / 1e9}
        per_conv.append(entry)
    dense = nn.Conv3d(64, 64, 3, padding=1)
    best = {
        name: conv_alone(dense, (2, 64, 32, 32, 32), dtype, args.repeats)
        for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))
    }
    precision = "bf16" if amp == torch.bfloat16 else "fp32"
    attainable = totals[precision][0] / totals[precision][1]
    achieved = flops / step_s
    for name in ("fp32", "bf16"):
        f, s = totals[name]
        bf, bs = best[name]
        rows.append([name, f"{f / s / 1e9:.1f}", f"{bf / bs / 1e9:.1f}", f"{s:.3f}"])
    print(
        f"network: {config.model.name} {config.model.options.get('base_channels')} wide, "
        f"patch {tc.patch_size} x batch {tc.batch_size}, step precision {precision}"
    )
    print(f"FLOPs per step (forward + backward): {flops / 1e9:.1f} GFLOP")
    print_table(
        ["precision", "same convs alone GFLOP/s", "dense 64ch conv GFLOP/s", "convs alone s"],
        rows,
    )
    print(
        f"real step {step_s:.3f} s = {achieved / 1e9:.1f} GFLOP/s: "
        f"{100 * achieved / attainable:.0f} % of its convolutions' attainable {precision} rate "
        f"({attainable / 1e9:.1f} GFLOP/s); data {data_s:.3f} s per batch (overlapped: no)"
    )
    total = sum(stages.values())
    print_table(
        ["stage", "s per step", "share"],
        [[k, f"{v:.3f}", f"{100 * v / total:.0f} %"] for k, v in sorted(stages.items(),
                                                                         key=lambda kv: -kv[1])],
    )  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "step.json"
    record = {
        "machine": machine_info(),
        "network": {"name": config.model.name, "options": config.model.options},
        "patch": list(tc.patch_size),
        "batch": tc.batch_size,
        "precision": precision,
        "flops_per_step": flops,
        "step_s": step_s,
        "achieved_gflops_per_s": achieved / 1e9,
        "attainable_gflops_per_s": {k: v[0] / v[1] / 1e9 for k, v in totals.items()},
        "dense_conv_gflops_per_s": {k: v[0] / v[1] / 1e9 for k, v in best.items()},
        "share_of_attainable": achieved / attainable,
        "profile_s_per_step": stages,
        "data_s_per_batch": data_s,
        "convolutions": per_conv,
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


def data_seconds(config, repeats: int) -> float:
    """Median seconds for the sampler to draw one batch from CT-sized cases, augmentation on."""
    from voxseg.geometry import Geometry, Reorientation
    from voxseg.preprocess import PreprocessRecord
    from voxseg.synth import random_case
    from voxseg.train.prepared import PreparedCase, foreground_positions
    from voxseg.train.sampler import SamplerConfig, epoch_batches

    tc = config.train
    cases = []
    for i in range(4):  # CT-like cases of about the planned median size, as prepared
        case = random_case(i, (80, 120, 120), (4.0, 2.8, 2.8))
        g: Geometry = case.geometry
        record = PreprocessRecord(
            g, Reorientation.to_canonical(g), tuple((0, s) for s in g.shape), g.shape
        )
        image = ((case.image.astype(np.float32) - 100) / 50).clip(-3, 3)
        label = (case.label > 0).astype(np.uint8)  # region bit mask: bit 0 = kidney+tumour
        cases.append(PreparedCase(f"c{i}", image, label, foreground_positions(label), record))
    sampler = SamplerConfig(
        batch_size=tc.batch_size,
        patch_size=tc.patch_size,
        foreground_oversample=tc.foreground_oversample,
        augment=tc.augment,
        seed=0,
        regions=len(config.data.targets()),
    )
    batches = epoch_batches(cases, 1, sampler, 0.0, steps=repeats + 1)
    return timed(lambda: next(batches), repeats)


if __name__ == "__main__":
    main()
