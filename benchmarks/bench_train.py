"""Training throughput of real `voxseg train` jobs against the seed's Keras/TensorFlow network.

Each voxseg row is a real run (`run_training`) on a synthetic 128^3 dataset, so batch
sampling and host-to-device copies are included: a step is the time between two consecutive
step reports of one epoch (the first step of each epoch, which waits for the epoch to start,
is left out). The Keras reference (`benchmarks/keras_seed.py`) runs in the same benchmark, in
a separate virtual environment with TensorFlow that this script creates on first use, and is
timed on random in-memory batches with `train_on_batch` (no data pipeline at all).

    .venv/bin/python benchmarks/bench_train.py              # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_train.py --variants   # + the seed network's step matrix

Prints a table and writes benchmarks/results/train.json (and seed_variants.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "bench_out"  # git-ignored
BENCH_VENV = ROOT / ".venv-bench"
TENSORFLOW = "tensorflow-cpu==2.21.0"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def machine_info() -> dict:
    """CPU model and the flags that decide which kernels run; library versions and threads."""
    import monai

    text = (
        Path("/proc/cpuinfo").read_text(encoding="utf-8") if Path("/proc/cpuinfo").exists() else ""
    )
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line and line.strip())
    flags = set(next((v for k, v in fields.items() if k.strip() == "flags"), "").split())
    model = next((v.strip() for k, v in fields.items() if k.strip() == "model name"), "?")
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in CPU_FLAGS},
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": os.getloadavg()[0],
    }


def stats(seconds: list[float]) -> dict:
    return {
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "n": len(seconds),
    }


def print_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [
        " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))
        for r in [headers, *rows]
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    text = "\n".join(lines)
    print(text, flush=True)
    return text


class StepClock:
    """Listens to run_training's progress: notes when each training step ends."""

    def __init__(self) -> None:
        self.ends: dict[tuple[int, int], float] = {}
        self.messages: list[str] = []

    def log(self, message: str) -> None:
        self.messages.append(message)

    def on_progress(self, step) -> None:
        if not step.task.startswith("epoch "):
            return
        # The end-of-epoch report repeats the last step's (epoch, step); keep the first.
        self.ends.setdefault((int(step.task.split()[1]), step.done), time.perf_counter())

    def step_seconds(self) -> list[float]:
        return [
            t - self.ends[(epoch, step - 1)]
            for (epoch, step), t in self.ends.items()
            if (epoch, step - 1) in self.ends
        ]


def synthetic_dataset(cases: int, side: int) -> Path:
    """`voxseg synth` cases of side^3 voxels, made once and reused."""
    folder = WORK / f"synth{side}x{cases}"
    if len(list(folder.glob("case_*/segmentation.nii.gz"))) < cases:
        subprocess.run(
            [sys.executable, "-m", "voxseg", "synth", "--out", str(folder), "--cases", str(cases)]
            + ["--shape", str(side), str(side), str(side), "--overwrite"],
            check=True,
        )
    return folder


def voxseg_run(
    name: str, data: Path, steps: int, preset: str | None, batch: int | None, precision: str
) -> dict:
    """One real training job of one epoch of `steps` steps; per-step times and voxels/s."""
    from voxseg.train.loop import TrainHooks
    from voxseg.train.run import TrainOptions, run_training

    clock = StepClock()
    overrides = {"train.epochs": 1, "train.steps_per_epoch": steps, "train.precision": precision}
    if batch is not None:
        overrides["train.batch_size"] = batch
    options = TrainOptions(
        data=data,
        out=WORK / "runs" / name,
        overrides=overrides,
        preset=preset,
        overwrite=True,
        device="cpu",
        cache_dir=WORK / "cache",
    )
    started = time.perf_counter()
    config, _ = run_training(options, TrainHooks(on_progress=clock.on_progress, log=clock.log))
    seconds = clock.step_seconds()
    grid = config.train.patch_size or config.preprocess.shape
    voxels = config.train.batch_size * grid[0] * grid[1] * grid[2]
    return {
        "name": name,
        "model": config.model.name,
        "options": config.model.options,
        "batch": config.train.batch_size,
        "patch": list(grid),
        "precision": precision,
        "step": stats(seconds),
        "voxels_per_s": voxels / statistics.median(seconds),
        "job_seconds": time.perf_counter() - started,
        "log": clock.messages,
    }


def ensure_bench_venv() -> Path:
    """A separate (git-ignored) venv with TensorFlow, so voxseg's own stays free of it."""
    python = BENCH_VENV / "bin" / "python"
    probe = [str(python), "-c", "import tensorflow"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"creating {BENCH_VENV} with {TENSORFLOW} (~270 MB download)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        + [TENSORFLOW, "psutil"],
        check=True,
    )
    return python


def keras_run(python: Path, side: int, batches: list[int], steps: int, precision: str) -> dict:
    out = subprocess.run(
        [str(python), str(ROOT / "benchmarks" / "keras_seed.py"), "--steps", str(steps)]
        + ["--side", str(side)]
        + ["--precision", precision, "--batches", *map(str, batches)],
        check=True,
        capture_output=True,
        encoding="utf-8",
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def seed_inference(side: int, repeats: int, precision: str) -> dict:
    """Whole-volume prediction of one side^3 volume with the seed network, as `predict` does."""
    from voxseg.inference import predict_probabilities
    from voxseg.models import build_model

    torch.manual_seed(0)
    model = build_model("seed").eval()
    volume = torch.randn(side, side, side).numpy()
    amp = torch.bfloat16 if precision == "bf16" else None
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        predict_probabilities(model, volume, window=None, amp=amp)
        times.append(time.perf_counter() - t0)
    return stats(times[1:])


def variant_matrix(batches: list[int], side: int, steps: int) -> list[dict]:
    """fwd + bwd + Adam of the seed network alone: literal/fast x fp32/bf16 x layout."""
    from voxseg.models import build_model

    rows = []
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last_3d}
    for batch in batches:
        for fast in (False, True):
            for precision in ("fp32", "bf16"):
                for layout, memory_format in layouts.items():
                    torch.manual_seed(0)
                    model = build_model("seed", fast=fast).to(memory_format=memory_format)
                    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                    x = torch.randn(batch, 1, side, side, side).to(memory_format=memory_format)
                    y = (torch.rand(batch, 1, side, side, side) > 0.9).float()
                    loss_fn = torch.nn.BCEWithLogitsLoss()
                    times = []
                    for _ in range(steps + 1):
                        t0 = time.perf_counter()
                        with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                            out = model(x)
                        loss = loss_fn(out.float(), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        times.append(time.perf_counter() - t0)
                    rows.append(
                        {
                            "batch": batch,
                            "forward": "fast" if fast else "literal",
                            "precision": precision,
                            "layout": layout,
                            "step": stats(times[1:]),
                        }
                    )
                    r = rows[-1]
                    print(
                        f"  b={batch} {r['forward']:7s} {precision} {layout:13s} "
                        f"{r['step']['median_s']:.2f} s/step",
                        flush=True,
                    )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=8)
    p.add_argument("--side", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--steps", type=int, default=5, help="steps per voxseg epoch (first dropped)")
    p.add_argument("--keras-steps", type=int, default=3)
    p.add_argument("--no-keras", action="store_true", help="skip the TensorFlow reference")
    p.add_argument("--variants", action="store_true", help="also time the seed step matrix")
    args = p.parse_args()
    t_start = time.perf_counter()
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    data = synthetic_dataset(args.cases, args.side)

    runs = []
    for batch in args.batches:  # the seed recipe; precision 'auto' is bf16 on AVX512-BF16/AMX
        runs.append(voxseg_run(f"seed_b{batch}", data, args.steps, "seed", batch, "auto"))
    top = max(args.batches)
    runs.append(voxseg_run(f"seed_b{top}_fp32", data, args.steps, "seed", top, "fp32"))
    runs.append(voxseg_run("unet_default", data, args.steps, None, None, "auto"))
    inference = {prec: seed_inference(args.side, 3, prec) for prec in ("fp32", "bf16")}

    keras = {}
    if not args.no_keras:
        python = ensure_bench_venv()
        for prec in ("fp32", "bf16"):
            keras[prec] = keras_run(python, args.side, args.batches, args.keras_steps, prec)

    auto = "bf16" if torch.bfloat16 == _auto_dtype() else "fp32"
    headers = ["run", "batch", "precision", "voxseg s/step (min-max)", "Mvox/s"]
    headers += ["Keras fp32 s/step", "x Keras fp32", "Keras bf16 s/step", "x Keras bf16"]
    rows = []
    for r in runs:
        prec = auto if r["precision"] == "auto" else r["precision"]
        s = r["step"]
        row = [r["name"], r["batch"], prec]
        row += [f"{s['median_s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f})"]
        row += [f"{r['voxels_per_s'] / 1e6:.2f}"]
        for kprec in ("fp32", "bf16"):
            k = keras.get(kprec, {}).get("train_step", {}).get(str(r["batch"]))
            if r["model"] == "seed" and k:
                ratio = k["median_s"] / s["median_s"]
                r[f"speedup_vs_keras_{kprec}"] = ratio
                row += [f"{k['median_s']:.2f}", f"{ratio:.2f}"]
            else:
                row += ["-", "-"]
        rows.append(row)
    for prec, s in inference.items():
        row = [f"seed predict {args.side}^3", 1, prec, f"{s['median_s']:.2f}", "-"]
        for kprec in ("fp32", "bf16"):
            k = keras.get(kprec, {}).get("predict_1")
            row += (
                [f"{k['median_s']:.2f}", f"{k['median_s'] / s['median_s']:.2f}"] if k else ["-"] * 2
            )
        rows.append(row)
    print()
    table = print_table(headers, rows)
    unet = runs[-1]
    print(f"unet plan: {unet['options']}, patch {unet['patch']}, batch {unet['batch']}")

    variants = None
    if args.variants:
        print("\nseed network alone, fwd + bwd + Adam, s/step (median):")
        variants = variant_matrix(args.batches, args.side, steps=2)
        (RESULTS / "seed_variants.json").write_text(
            json.dumps({"machine": machine, "rows": variants}, indent=2) + "\n", encoding="utf-8"
        )

    machine["load_average_at_end"] = os.getloadavg()[0]
    machine["tensorflow"] = next((k["tensorflow"] for k in keras.values()), None)
    result = {
        "machine": machine,
        "dataset": {"cases": args.cases, "side": args.side, "path": str(data)},
        "voxseg": runs,
        "voxseg_inference": inference,
        "keras": keras,
        "table": table,
        "wall_seconds": time.perf_counter() - t_start,
    }
    (RESULTS / "train.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"\nwrote {RESULTS / 'train.json'} in {result['wall_seconds']:.0f} s")


def _auto_dtype():
    from voxseg.runtime import autocast_dtype

    return autocast_dtype("auto", torch.device("cpu"))


if __name__ == "__main__":
    main()
