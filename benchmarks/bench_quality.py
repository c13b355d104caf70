"""Quality under a time budget, as a new user meets it: `voxseg train --max-minutes M` with no
other flag on CT-like cases painted around real KiTS19 anatomy, then predict unseen cases on
their original grids and score them. Repeats (seeds) give the spread; the `busy` condition
keeps one core busy with another process for the whole run.

    python benchmarks/bench_quality.py                      # 10 min x 3 seeds x quiet, busy
    python benchmarks/bench_quality.py --minutes 4 --seeds 0 --conditions busy

Prints a table and writes benchmarks/results/quality.json. Needs ../shared/data/kits19-labels.
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

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from make_kits_like import SHARED, make_case  # noqa: E402


def dataset(work: Path, first: int, count: int, name: str) -> Path:
    """KiTS-like cases `first`..`first+count-1`, made once and reused."""
    folder = work / name
    cases = sorted(SHARED.glob("case_*"))[first : first + count]
    for i, case in enumerate(cases):
        if not (folder / case.name / "segmentation.nii.gz").is_file():
            make_case(case, folder, seed=first + i)
    return folder


def hog() -> subprocess.Popen:
    """Another process keeping one core busy (a user's compile, a browser, a second job)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def voxseg(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "voxseg", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"voxseg {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def one_run(
    work: Path, train: Path, test: Path, minutes: float, seed: int, busy: bool, extra: list[str]
) -> dict:
    from voxseg.evaluation import evaluate
    from voxseg.run_folder import RunFolder

    name = "_".join(["busy" if busy else "quiet", str(seed), *[a.strip("-") for a in extra]])
    run, pred = work / "runs" / name, work / "pred" / name
    background = hog() if busy else None
    try:
        started = time.monotonic()
        log = voxseg(
            "train",
            "--data",
            str(train),
            "--out",
            str(run),
            "--max-minutes",
            str(minutes),
            "--seed",
            str(seed),
            "--overwrite",
            "--cache",
            str(work / "cache"),
            *extra,
        )
        train_wall = time.monotonic() - started
        t0 = time.monotonic()
        voxseg("predict", "--model", str(run), "--input", str(test), "--output", str(pred),
               "--overwrite")  # fmt: skip
        predict_wall = time.monotonic() - t0
    finally:
        if background is not None:
            background.kill()
    state = RunFolder(run).load_state()
    history = state.history if state else []
    result = evaluate(pred, test)
    dice = {c.case_id: c.dice for c in result.cases}
    return {
        "condition": "busy" if busy else "quiet",
        "seed": seed,
        "train_args": extra,
        "budget_s": minutes * 60,
        "trained_s": state.elapsed if state else None,
        "train_wall_s": train_wall,
        "epochs": len(history),
        "step_s": sum(r.step_seconds for r in history),
        "val_s": sum(r.val_seconds for r in history),
        "data_s": sum(r.data_seconds for r in history),
        "predict_wall_s": predict_wall,
        "dice_mean": statistics.fmean(dice.values()),
        "dice_min": min(dice.values()),
        "dice": dice,
        "log": [line for line in log.splitlines() if line.startswith(("plan:", "stopped"))],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--conditions", nargs="+", default=["quiet", "busy"])
    p.add_argument("--work", type=Path, default=Path("/tmp/voxseg-bench-quality"))
    p.add_argument("--tag", default="", help="label of this run in the JSON (e.g. a commit)")
    p.add_argument(
        "--train-args", default="", help="extra `voxseg train` options, e.g. '--augment light'"
    )
    args = p.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: the real KiTS19 label maps are needed (shared data absent)")
    train = dataset(args.work, 0, 32, "train")  # cases 0-31
    test = dataset(args.work, 32, 18, "test")  # cases 32-49, never seen in training
    runs = []
    print(f"{'condition':9} {'seed':>4} {'trained s':>9} {'budget %':>8} {'epochs':>6} "
          f"{'val %':>5} {'Dice mean':>9} {'min':>6}", flush=True)  # fmt: skip
    for condition in args.conditions:
        for seed in args.seeds:
            extra = args.train_args.split()
            r = one_run(args.work, train, test, args.minutes, seed, condition == "busy", extra)
            runs.append(r)
            print(
                f"{r['condition']:9} {seed:>4} {r['trained_s']:>9.0f} "
                f"{100 * r['trained_s'] / r['budget_s']:>8.1f} {r['epochs']:>6} "
                f"{100 * r['val_s'] / max(r['trained_s'], 1e-9):>5.1f} "
                f"{r['dice_mean']:>9.4f} {r['dice_min']:>6.3f}",
                flush=True,
            )
    summary = {}
    for condition in args.conditions:
        means = [r["dice_mean"] for r in runs if r["condition"] == condition]
        if means:
            summary[condition] = {
                "dice_mean_over_seeds": statistics.fmean(means),
                "spread": [min(means), max(means)],
            }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"quality{'_' + args.tag if args.tag else ''}.json"
    record = {
        "tag": args.tag,
        "machine": {"cpu": platform.processor(), "cores": os.cpu_count()},
        "minutes": args.minutes,
        "summary": summary,
        "runs": runs,
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
