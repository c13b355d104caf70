"""Cohort throughput of folder prediction: reading, network and writing in turn against the
overlapped pipeline (next case read and previous one written while the network runs).

Each mode runs in its own process (so peak memory is its own), alternating, on the same
folder of scans with the same model; outputs go to a temporary folder.

    python benchmarks/bench_cohort.py --model RUN --input FOLDER [--repeats 2] [--engine torch]

Prints a table and writes benchmarks/results/cohort.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def worker(model: Path, data: Path, background: bool, engine: str) -> dict:
    from voxseg.prediction import iter_predictions, load_predictor

    predictor = load_predictor(model, "cpu", engine=engine)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        n = sum(1 for _ in iter_predictions(predictor, data, Path(out), background=background))
        seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cases": n, "seconds": seconds, "peak_rss_mb": peak_mb}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--input", type=Path, required=True)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--engine", default="torch")
    p.add_argument("--worker", choices=["sequential", "overlapped"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        result = worker(args.model, args.input, args.worker == "overlapped", args.engine)
        print(json.dumps(result))
        return
    runs = {"sequential": [], "overlapped": []}
    for _ in range(args.repeats):
        for mode in runs:
            cmd = [sys.executable, __file__, "--model", str(args.model), "--input",
                   str(args.input), "--engine", args.engine, "--worker", mode]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs[mode].append(json.loads(out.strip().splitlines()[-1]))
            r = runs[mode][-1]
            print(f"{mode:11} {r['cases']} cases in {r['seconds']:.1f} s "
                  f"({60 * r['cases'] / r['seconds']:.1f}/min), peak {r['peak_rss_mb']:.0f} MB",
                  flush=True)  # fmt: skip
    summary = {
        mode: {
            "cases": rs[0]["cases"],
            "median_seconds": statistics.median(r["seconds"] for r in rs),
            "cases_per_minute": 60 * rs[0]["cases"] / statistics.median(r["seconds"] for r in rs),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
        }
        for mode, rs in runs.items()
    }
    ratio = summary["overlapped"]["cases_per_minute"] / summary["sequential"]["cases_per_minute"]
    print(f"overlapped / sequential throughput: {ratio:.2f}x")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "cohort.json"
    record = {
        "machine": {"cpu": platform.processor(), "cores": os.cpu_count()},
        "model": str(args.model),
        "input": str(args.input),
        "engine": args.engine,
        "summary": summary,
        "speedup": ratio,
        "runs": runs,
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
