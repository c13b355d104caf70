"""Quality under a time budget, as a new user meets it: `voxseg train --max-minutes M` with no
other flag on CT-like cases painted around real KiTS19 anatomy, then predict unseen cases on
their original grids and score them. Repeats (seeds) give the spread; the `busy` condition
keeps one core busy with another process for the whole run.

Each imaging domain (`voxseg.synth.domain`: contrast phase, dose, kernel, slice thickness) is
a dataset of its own, trained and scored apart, as a user with that site's scans would; a
recipe is judged by its worst domain. `--variants` compares recipes in one run (each a string
of `voxseg train` options, "" the default), interleaved so a drift of the machine hits all.

    python benchmarks/bench_quality.py                      # 10 min x 3 seeds x quiet, busy
    python benchmarks/bench_quality.py --minutes 4 --seeds 0 --conditions busy
    python benchmarks/bench_quality.py --seeds 0 --conditions quiet \
        --domains nephrographic corticomedullary lowdose --variants "" "--data-grid"

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

from make_kits_like import SHARED, SLICES_MM, make_case  # noqa: E402


def dataset(work: Path, first: int, count: int, name: str, domain: str) -> Path:
    """KiTS-like cases `first`..`first+count-1` painted in `domain`, made once and reused."""
    folder = work / domain / name
    cases = sorted(SHARED.glob("case_*"))[first : first + count]
    for i, case in enumerate(cases):
        if not (folder / case.name / "segmentation.nii.gz").is_file():
            make_case(case, folder, seed=first + i, domain=domain)
    return folder


def hog() -> subprocess.Popen:
    """Another process keeping one core busy (a user's compile, a browser, a second job)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def voxseg(*args: str, src: Path | None = None) -> str:
    """Run the CLI; `src` runs another checkout's code (a baseline) with the same packages."""
    env = {**os.environ, "PYTHONPATH": str(src)} if src else None
    proc = subprocess.run(
        [sys.executable, "-m", "voxseg", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"voxseg {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def one_run(
    work: Path,
    domain: str,
    minutes: float,
    seed: int,
    busy: bool,
    extra: list[str],
    src: Path | None = None,
) -> dict:
    from voxseg.evaluation import evaluate
    from voxseg.run_folder import RunFolder

    train = dataset(work, 0, 32, "train", domain)  # cases 0-31
    test = dataset(work, 32, 18, "test", domain)  # cases 32-49, never seen in training
    parts = [domain, "busy" if busy else "quiet", str(seed), *[a.strip("-") for a in extra]]
    parts += ["baseline"] if src else []
    name = "_".join(parts)
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
            src=src,
        )
        train_wall = time.monotonic() - started
        t0 = time.monotonic()
        voxseg("predict", "--model", str(run), "--input", str(test), "--output", str(pred),
               "--overwrite", src=src)  # fmt: skip
        predict_wall = time.monotonic() - t0
    finally:
        if background is not None:
            background.kill()
    state = RunFolder(run).load_state()
    history = state.history if state else []
    result = evaluate(pred, test)
    dice = {c.case_id: c.dice for c in result.cases}
    return {
        "domain": domain,
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
        "spacing": RunFolder(run).load_config().preprocess.spacing,
        "log": [line for line in log.splitlines() if line.startswith(("plan:", "stopped"))],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--conditions", nargs="+", default=["quiet", "busy"])
    p.add_argument("--domains", nargs="+", default=list(SLICES_MM), choices=list(SLICES_MM))
    p.add_argument("--work", type=Path, default=Path("/tmp/voxseg-bench-quality"))
    p.add_argument("--tag", default="", help="label of this run in the JSON (e.g. a commit)")
    p.add_argument(
        "--variants",
        nargs="+",
        default=[""],
        help="`voxseg train` options per recipe compared, '' for the default; a lone flag "
        'needs a leading space to pass argparse: " --data-grid"',
    )
    p.add_argument(
        "--baseline",
        type=Path,
        help="a checkout (git worktree) of an earlier commit: its default recipe runs as one "
        "more variant, 'baseline', beside --variants (same data, interleaved)",
    )
    args = p.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: the real KiTS19 label maps are needed (shared data absent)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"quality{'_' + args.tag if args.tag else ''}.json"
    runs = []
    print(f"{'domain':16} {'variant':14} {'condition':9} {'seed':>4} {'trained s':>9} "
          f"{'budget %':>8} {'epochs':>6} {'val %':>5} {'Dice mean':>9} {'min':>6}",
          flush=True)  # fmt: skip
    for condition in args.conditions:
        for seed in args.seeds:
            for domain in args.domains:
                recipes = [(v, None) for v in args.variants]
                recipes += [("", args.baseline / "src")] if args.baseline else []
                for variant, src in recipes:
                    busy = condition == "busy"
                    r = one_run(args.work, domain, args.minutes, seed, busy, variant.split(), src)
                    r["variant"] = "baseline" if src else variant.strip() or "default"
                    runs.append(r)
                    print(
                        f"{domain:16} {r['variant']:14} {r['condition']:9} {seed:>4} "
                        f"{r['trained_s']:>9.0f} {100 * r['trained_s'] / r['budget_s']:>8.1f} "
                        f"{r['epochs']:>6} {100 * r['val_s'] / max(r['trained_s'], 1e-9):>5.1f} "
                        f"{r['dice_mean']:>9.4f} {r['dice_min']:>6.3f}",
                        flush=True,
                    )
                    write(out, args, runs)
    print(json.dumps(write(out, args, runs), indent=2))
    print(f"wrote {out}")


def summarise(runs: list[dict]) -> dict:
    """Per variant and condition: the mean over seeds per domain, and the worst domain."""
    summary: dict = {}
    for r in runs:
        key = f"{r['variant']} / {r['condition']}"
        summary.setdefault(key, {}).setdefault(r["domain"], []).append(r["dice_mean"])
    for key, domains in summary.items():
        means = {d: statistics.fmean(v) for d, v in domains.items()}
        worst = min(means, key=means.get)
        summary[key] = {
            "dice_mean_per_domain": means,
            "runs_per_domain": {d: len(v) for d, v in domains.items()},
            "worst_domain": worst,
            "worst_dice": means[worst],
            "spread_between_domains": max(means.values()) - means[worst],
        }
    return summary


def write(out: Path, args, runs: list[dict]) -> dict:
    """Save after every run, so an interrupted benchmark keeps what it measured."""
    summary = summarise(runs)
    baseline = args.baseline and subprocess.run(
        ["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    record = {
        "tag": args.tag,
        "baseline_commit": baseline or None,
        "machine": {"cpu": platform.processor(), "cores": os.cpu_count()},
        "minutes": args.minutes,
        "summary": summary,
        "runs": runs,
    }
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return summary


if __name__ == "__main__":
    main()
