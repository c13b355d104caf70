"""Network-grid prediction engines side by side: PyTorch fp32, PyTorch bf16 autocast (on CPUs
that run it fast) and ONNX Runtime fp32 (`voxseg.export` + `voxseg.onnx_engine`).

Two models, untrained (latency does not depend on the weights):
- the default U-Net as `voxseg train` plans it for KiTS-like CT (512 x 512 x 300 at
  2.5 x 0.8 x 0.8 mm), predicting with the planned sliding window on a synthetic CT of that
  size, preprocessed as `voxseg predict` does;
- the seed network on its whole 128^3 grid.

Each engine runs in its own child process (peak RSS is the child's ru_maxrss; the ONNX Runtime
child never imports torch): one warm-up, then `--repeats` timed predictions (median shown).

    .venv/bin/python benchmarks/bench_engines.py                       # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_engines.py --shape 64 128 128    # a quick check

`--shape` is the synthetic CT's (slices, rows, columns); the U-Net keeps its full-size plan and
the seed's grid shrinks to fit the CT. Prints a table and writes benchmarks/results/engines.json
(engines_ZxYxX.json for another --shape).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SPACING = (2.5, 0.8, 0.8)
"""Of the synthetic CT (mm, array order z y x): KiTS19's typical slices and pixels."""
FULL_SHAPE = (300, 512, 512)
ENGINES = ("torch fp32", "torch bf16", "onnxruntime fp32")


def realistic_plan():
    """The default recipe planned for ten KiTS-like CTs of FULL_SHAPE at SPACING (CPU class)."""
    from voxseg.train.fingerprint import Fingerprint, Intensity
    from voxseg.train.plan import plan_default

    fingerprint = Fingerprint(
        case_ids=tuple(f"case_{i:05d}" for i in range(10)),
        shapes=(FULL_SHAPE,) * 10,
        spacings=(SPACING,) * 10,
        intensity=Intensity(p005=-79.0, p995=304.0, mean=101.0, std=76.9),
    )
    plan = plan_default(fingerprint, voxels_per_second=1.5e6, max_minutes=10, device_class="cpu")
    return plan.config


def seed_config(ct_shape: tuple[int, int, int]):
    """The seed recipe, its 128^3 grid shrunk (to multiples of 8) for a small CT."""
    from dataclasses import replace

    from voxseg.config import SEED_SHAPE
    from voxseg.train.plan import seed_preset

    config = seed_preset()
    grid = tuple(min(g, max(8, s // 8 * 8)) for g, s in zip(SEED_SHAPE, ct_shape, strict=True))
    return replace(config, preprocess=replace(config.preprocess, shape=grid))


def make_run(folder: Path, config) -> Path:
    """A run folder with `config` and seeded random weights, exported to ONNX beside them."""
    import torch

    from voxseg.export import export_onnx
    from voxseg.models import build_model
    from voxseg.run_folder import RunFolder
    from voxseg.weights import save_model

    run = RunFolder(folder)
    run.root.mkdir(parents=True, exist_ok=True)
    run.save_config(config)
    torch.manual_seed(0)
    save_model(run.best_weights, build_model(config.model.name, **config.model.options))
    export_onnx(run.root, run.root, overwrite=True)
    return run.root


def network_input(config, ct: np.ndarray, path: Path) -> tuple[int, ...]:
    """Preprocess `ct` as `voxseg predict` would and save the network input to `path`."""
    from voxseg.geometry import Geometry
    from voxseg.preprocess import preprocess_image

    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry(ct.shape, SPACING, (0.0, 0.0, 0.0), identity)
    net_input, _ = preprocess_image(ct, geometry, config.preprocess)
    np.save(path, net_input)
    return net_input.shape


# ---- child: one engine, one model ---------------------------------------------------------
def child(engine: str, run: Path, config_path: Path, onnx_path: Path, x: Path, out: Path, n: int):
    """Time `n` predictions after a warm-up; print them as JSON; save the last probabilities."""
    from voxseg.config import RunConfig

    config = RunConfig.load(config_path)
    volume = np.load(x)
    kwargs = {"window": config.infer.window, "overlap": config.infer.overlap}
    kwargs["pad_value"] = config.preprocess.pad_value
    if engine == "onnxruntime fp32":
        from voxseg.onnx_engine import load_onnx, predict_probabilities_onnx

        model = load_onnx(onnx_path)

        def predict() -> np.ndarray:
            return predict_probabilities_onnx(model, volume, **kwargs)
    else:
        from voxseg.inference import predict_probabilities
        from voxseg.prediction import load_predictor

        predictor = load_predictor(run, device="cpu", precision=engine.split()[1])

        def predict() -> np.ndarray:
            return predict_probabilities(predictor.model, volume, amp=predictor.amp, **kwargs)

    prob = predict()  # warm-up: first-call allocations, oneDNN/ORT kernel selection
    seconds = []
    for _ in range(n):
        t = time.perf_counter()
        prob = predict()
        seconds.append(time.perf_counter() - t)
    np.save(out, np.reshape(prob, (-1, *volume.shape)))
    print(json.dumps({"seconds": seconds, "torch_imported": "torch" in sys.modules}))


# ---- parent -------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=FULL_SHAPE, metavar=("Z", "Y", "X"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        engine, *paths, n = args.child
        child(engine, *map(Path, paths), int(n))
        return

    from bench_predict import ct_like, timed
    from bench_train import RESULTS, WORK, machine_info, print_table
    from voxseg.run_folder import RunFolder
    from voxseg.runtime import cpu_has_fast_bf16

    work = WORK / "engines"
    shape = tuple(args.shape)
    ct = ct_like(shape[0], max(shape[1:]), SPACING)[:, : shape[1], : shape[2]]
    models = {"unet (planned)": realistic_plan(), "seed": seed_config(shape)}
    engines = [e for e in ENGINES if e != "torch bf16" or cpu_has_fast_bf16()]
    machine = machine_info()
    rows, results = [], []
    for name, config in models.items():
        run = RunFolder(make_run(work / name.split()[0], config))
        x = work / f"{name.split()[0]}_input.npy"
        grid = network_input(config, ct, x)
        reference = None
        for engine in engines:
            out = work / f"{name.split()[0]}_{engine.replace(' ', '_')}.npy"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine]
            cmd += [str(run.root), str(run.config_path), str(run.onnx_model), str(x), str(out)]
            cmd += [str(args.repeats)]
            r = timed(cmd, work / f"{name.split()[0]}_{engine.replace(' ', '_')}.log")
            prob = np.load(out)
            reference = prob if reference is None else reference
            diff = float(np.abs(prob - reference).max())
            median = statistics.median(r["seconds"])
            window = config.infer.window
            results.append(
                {
                    "model": name,
                    "options": config.model.options,
                    "grid": grid,
                    "window": window,
                    "engine": engine,
                    "seconds": r["seconds"],
                    "median_s": median,
                    "peak_rss_gb": r["peak_rss_gb"],
                    "max_abs_diff_vs_torch_fp32": diff,
                    "torch_imported": r["torch_imported"],
                }
            )
            rows.append(
                [
                    name,
                    "x".join(map(str, grid)),
                    "whole"
                    if config.infer.window is None
                    else "x".join(map(str, config.infer.window)),
                    engine,
                    f"{median:.2f} ({min(r['seconds']):.2f}-{max(r['seconds']):.2f})",
                    f"{r['peak_rss_gb']:.2f}",
                    f"{diff:.1e}",
                ]  # fmt: skip
            )
    headers = ["model", "network grid", "window", "engine", "s/volume (min-max)", "peak RSS GB"]
    table = print_table([*headers, "max |dp| vs torch fp32"], rows)
    if "torch bf16" not in engines:
        print("torch bf16: skipped, this CPU has no fast bf16 (AVX512-BF16 or AMX)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Only the full-size run is the record; a quick check does not overwrite it.
    suffix = "" if shape == FULL_SHAPE else "_" + "x".join(map(str, shape))
    path = RESULTS / f"engines{suffix}.json"
    record = {"machine": machine, "ct_shape": shape, "ct_spacing": SPACING, "table": table}
    path.write_text(json.dumps({**record, "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
