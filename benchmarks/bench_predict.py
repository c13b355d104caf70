"""End-to-end `voxseg predict` against MONAI's standard recipe: wall time and peak memory.

Both tools run as child processes on the same CT files with the same network weights (the
seed network, untrained: latency does not depend on the weights), target spacing, intensity
window, 128^3 patch and 0.25 overlap. voxseg runs its own pipeline (`voxseg predict`: body
crop, exact rewrite of the network, Gaussian-weighted windows, chunked restore); MONAI runs
`benchmarks/monai_recipe.py` with the literal network. Peak RSS is the child's ru_maxrss.

    .venv/bin/python benchmarks/bench_predict.py     # ~6 min on 2 cores

Inputs: a synthetic KiTS-size CT (512 x 512 x 300 at 2.5 x 0.8 x 0.8 mm), a 1000-slice one,
and ../shared/data/ct-example/ct_abdomen_3mm.nii.gz when present. Prints a table and writes
benchmarks/results/predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench_train import RESULTS, ROOT, WORK, machine_info, print_table

REAL_CT = ROOT.parent / "shared" / "data" / "ct-example" / "ct_abdomen_3mm.nii.gz"
SPACING = (2.5, 1.6, 1.6)
"""Target spacing of both tools (mm, canonical S, P, L)."""
RSS_LIMIT_GB = 4.0


def ct_like(slices: int, side: int, spacing: tuple[float, float, float], seed: int = 0):
    """A quick CT-like int16 volume (z, y, x) in HU: air, a fat-rimmed elliptic torso, spine,
    two kidneys over a z range, and noise. Only its extent and intensities matter here."""
    rng = np.random.default_rng(seed)
    dz, dy, dx = spacing
    y = (np.arange(side) - side / 2) * dy
    x = (np.arange(side) - side / 2) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    torso = (xx / 170) ** 2 + (yy / 125) ** 2
    plane = np.full((side, side), -1000, np.int16)
    plane[torso < 1.0] = -100  # subcutaneous fat
    plane[torso < 0.8] = 40  # soft tissue
    plane[(xx**2 + (yy - 70) ** 2) < 18**2] = 600  # vertebra
    kidneys = ((np.abs(xx) - 65) / 30) ** 2 + ((yy - 45) / 45) ** 2 < 1
    z = np.arange(slices) * dz
    in_kidney_range = np.abs(z - z.mean()) < 60
    volume = np.empty((slices, side, side), np.int16)
    for k in range(slices):
        volume[k] = plane
        if in_kidney_range[k]:
            volume[k][kidneys] = 160
    volume += rng.integers(-25, 26, size=volume.shape, dtype=np.int16)
    return volume


def write_ct(path: Path, slices: int, side: int = 512, spacing=(2.5, 0.8, 0.8)) -> Path:
    import SimpleITK as sitk

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(ct_like(slices, side, spacing))
    img.SetSpacing(spacing[::-1])  # ITK order (x, y, z)
    tmp = path.with_name("tmp_" + path.name)
    sitk.WriteImage(img, str(tmp), useCompression=True)
    tmp.rename(path)
    return path


def make_run(folder: Path, precision: str) -> Path:
    """A run folder: the seed network, untrained, predicting at SPACING with 128^3 windows."""
    import torch

    from voxseg.config import InferConfig, ModelConfig, PreprocessConfig, RunConfig, TrainConfig
    from voxseg.models import build_model
    from voxseg.run_folder import RunFolder
    from voxseg.weights import save_model

    config = RunConfig(
        preprocess=PreprocessConfig(mode="spacing", spacing=SPACING),
        model=ModelConfig(name="seed"),
        train=TrainConfig(patch_size=(128, 128, 128), precision=precision),
        infer=InferConfig(window=(128, 128, 128), overlap=0.25),
    )
    folder.mkdir(parents=True, exist_ok=True)
    run = RunFolder(folder)
    run.save_config(config)
    torch.manual_seed(0)
    save_model(run.best_weights, build_model("seed"))
    return folder


# The child is forked from this small helper, not from the benchmark: Linux counts the RSS of
# the process that execs into a child's ru_maxrss, which would add the benchmark's own memory.
_SPAWN = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
report = {"status": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss,
          "wall_s": time.perf_counter() - t0}
open(sys.argv[1], "w", encoding="utf-8").write(json.dumps(report))
"""


def timed(cmd: list[str], log: Path) -> dict:
    """Run `cmd`; its wall time, exit status and peak resident memory (ru_maxrss via wait4)."""
    report = log.with_suffix(".rusage.json")
    with open(log, "w", encoding="utf-8") as err:
        out = subprocess.run(
            [sys.executable, "-c", _SPAWN, str(report), *cmd],
            stdout=subprocess.PIPE,
            stderr=err,
            encoding="utf-8",
        )
    usage = json.loads(report.read_text(encoding="utf-8"))
    if out.returncode or usage["status"]:
        raise RuntimeError(f"{cmd[:3]} failed ({usage['status']}); see {log}")
    lines = out.stdout.strip().splitlines()
    extra = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return {"wall_s": usage["wall_s"], "peak_rss_gb": usage["maxrss_kb"] / 2**20, **extra}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slices", type=int, nargs="+", default=[300, 1000])
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--skip-monai-on", type=int, nargs="*", default=[], help="slice counts")
    args = p.parse_args()
    t_start = time.perf_counter()
    machine = machine_info()
    work = WORK / "predict"
    inputs = {
        f"synthetic {args.side}x{args.side}x{n}": write_ct(
            work / f"ct_{args.side}_{n}.nii.gz", n, args.side
        )
        for n in args.slices
    }
    if REAL_CT.exists():
        inputs["ct_abdomen_3mm (real)"] = REAL_CT
    else:
        print(f"{REAL_CT} not found: real-CT row skipped")
    runs = {prec: make_run(work / f"run_{prec}", prec) for prec in ("bf16", "fp32")}
    voxseg = [sys.executable, "-m", "voxseg", "predict", "--device", "cpu", "--overwrite"]
    monai = [sys.executable, str(ROOT / "benchmarks" / "monai_recipe.py")]

    rows, results = [], []
    for name, image in inputs.items():
        out = work / "out" / name.split()[0]
        for prec in ("bf16", "fp32"):
            entry = {"input": name, "precision": prec}
            v = timed(
                [*voxseg, "--model", str(runs[prec]), "--input", str(image)]
                + ["--output", str(out / f"voxseg_{prec}.nii.gz")],
                work / "voxseg.log",
            )
            entry["voxseg"] = v
            skip = any(name.endswith(f"x{n}") for n in args.skip_monai_on)
            if not skip:
                m = timed(
                    [*monai, "--run", str(runs[prec]), "--image", str(image)]
                    + ["--out", str(out / f"monai_{prec}"), "--precision", prec],
                    work / "monai.log",
                )
                entry["monai"] = m
                entry["speedup"] = m["wall_s"] / v["wall_s"]
                entry["rss_ratio"] = m["peak_rss_gb"] / v["peak_rss_gb"]
            results.append(entry)
            row = [name, prec, f"{v['wall_s']:.1f}", f"{v['peak_rss_gb']:.2f}"]
            if "monai" in entry:
                m = entry["monai"]
                row += [f"{m['wall_s']:.1f}", f"{m['peak_rss_gb']:.2f}"]
                row += [f"{entry['speedup']:.2f}", f"{entry['rss_ratio']:.2f}"]
            else:
                row += ["-"] * 4
            rows.append(row)
            print(" | ".join(rows[-1]), flush=True)

    print()
    headers = ["input", "precision", "voxseg s", "voxseg GB", "MONAI s", "MONAI GB"]
    headers += ["voxseg faster x", "MONAI/voxseg RSS"]
    table = print_table(headers, rows)
    largest = max(args.slices)
    big = [r for r in results if r["input"].endswith(f"x{largest}")]
    within = all(r["voxseg"]["peak_rss_gb"] <= RSS_LIMIT_GB for r in big)
    print(
        f"\n{largest}-slice CT: voxseg peak RSS "
        + ", ".join(f"{r['precision']} {r['voxseg']['peak_rss_gb']:.2f} GB" for r in big)
        + f" -> {'within' if within else 'OVER'} {RSS_LIMIT_GB:.0f} GB"
    )
    machine["load_average_at_end"] = os.getloadavg()[0]
    result = {
        "machine": machine,
        "spacing": SPACING,
        "patch": [128, 128, 128],
        "overlap": 0.25,
        "results": results,
        f"voxseg_{largest}_slices_within_{RSS_LIMIT_GB:.0f}gb": within,
        "table": table,
        "wall_seconds": time.perf_counter() - t_start,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "predict.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS / 'predict.json'} in {result['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
