"""`voxseg predict` with trained default-recipe models on the issue's reference CT size:
488 x 404 x 336 voxels at 0.75 x 0.75 x 1 mm. Wall time and peak RSS of the whole command
(read, preprocess, network, restore, write), each run folder side by side in one run.

    .venv/bin/python benchmarks/bench_default_predict.py RUN [RUN ...]

Prints a table and writes benchmarks/results/default_predict.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_predict import ct_like, timed
from bench_train import RESULTS, WORK, machine_info, print_table

SHAPE = (336, 404, 488)
SPACING = (1.0, 0.75, 0.75)


def reference_ct(path: Path) -> Path:
    import SimpleITK as sitk

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        volume = ct_like(SHAPE[0], 512, SPACING)[:, 54 : 54 + SHAPE[1], 12 : 12 + SHAPE[2]]
        img = sitk.GetImageFromArray(volume.copy())
        img.SetSpacing(SPACING[::-1])
        sitk.WriteImage(img, str(path), useCompression=True)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    work = WORK / "default_predict"
    image = reference_ct(work / "ct_488x404x336.nii.gz")
    rows, results = [], []
    for run in args.runs:
        config = json.loads((run / "config.json").read_text(encoding="utf-8"))
        times = []
        for i in range(args.repeats):
            out = work / "out" / f"{run.name}_{i}.nii.gz"
            cmd = [sys.executable, "-m", "voxseg", "predict", "--model", str(run)]
            cmd += ["--input", str(image), "--output", str(out), "--overwrite", "--device", "cpu"]
            times.append(timed(cmd, work / "voxseg.log"))
        best = min(times, key=lambda t: t["wall_s"])
        results.append({"run": str(run), "model": config["model"], "runs": times})
        rows.append(
            [
                run.name,
                json.dumps(config["model"]["options"]),
                f"{best['wall_s']:.1f}",
                f"{max(t['peak_rss_gb'] for t in times):.2f}",
            ]  # fmt: skip
        )
    table = print_table(["run", "model options", "best wall s", "peak RSS GB"], rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "default_predict.json"
    record = {"machine": machine_info(), "shape": SHAPE, "spacing": SPACING, "table": table}
    out.write_text(json.dumps({**record, "results": results}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
