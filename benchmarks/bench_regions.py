"""KiTS19 regions at equal CPU time: one `--regions kits` network against two binary models
(kidney+tumour, tumour) that share the same total budget.

CT-like cases are painted around the real KiTS19 label maps (cases 0-31 train, 32-49 test,
see make_kits_like.py); predictions of unseen cases are scored on their original grids the
way KiTS19 ranks them: kidney+tumour Dice, tumour Dice and their mean (the composite).

    python benchmarks/bench_regions.py                  # 20 min regions vs 10 + 10 binary
    python benchmarks/bench_regions.py --minutes 4      # a quick look
    python benchmarks/bench_regions.py --variants regions --tag ds \
        --train-args=--deep-supervision                  # one change, regions only
    python benchmarks/bench_regions.py --seeds 0 1 2     # repeats, each variant per seed
    python benchmarks/bench_regions.py --variants regions --tta-too
                                  # the same region model predicted again with --tta (paired)

Prints a table and writes benchmarks/results/regions[_TAG].json. Needs ../shared/data/kits19-labels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

from bench_quality import dataset, voxseg  # noqa: E402
from make_kits_like import SHARED  # noqa: E402


def train_and_predict(work: Path, name: str, train: Path, test: Path, minutes: float, args):
    run, pred = work / "runs" / name, work / "pred" / name
    started = time.monotonic()
    voxseg("train", "--data", str(train), "--out", str(run), "--max-minutes", str(minutes),
           "--overwrite", "--cache", str(work / "cache"), *args)  # fmt: skip
    trained = time.monotonic() - started
    predict(run, test, pred)
    return run, pred, trained


def predict(run: Path, test: Path, pred: Path, *args: str) -> None:
    voxseg("predict", "--model", str(run), "-i", str(test), "-o", str(pred), "--overwrite", *args)


def combine(kidney: Path, tumour: Path, out: Path) -> Path:
    """Two binary models' masks as one KiTS label map (tumour kept inside kidney+tumour, as
    the region model's prediction is)."""
    from voxseg.data.io import read_image, write_image

    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(kidney.glob("*.nii.gz")):
        kt, geometry = read_image(path)
        tu, _ = read_image(tumour / path.name)
        labels = np.where(kt > 0, np.where(tu > 0, 2, 1), 0).astype(np.uint8)
        write_image(out / path.name, labels, geometry, overwrite=True)
    return out


def tta_scores(run: Path, pred: Path, test: Path) -> dict:
    """The same trained model predicted again with mirror test-time augmentation."""
    started = time.monotonic()
    predict(run, test, pred, "--tta")
    return {"predict_wall_s": time.monotonic() - started, **scores(pred, test)}


def scores(pred: Path, test: Path) -> dict:
    from voxseg.evaluation import evaluate_regions
    from voxseg.regions import KITS

    result = evaluate_regions(pred, test, KITS)
    kt, tu = ({c.case_id: c.dice for c in r.cases} for r in result.results)
    return {
        "kidney_tumour_dice": statistics.fmean(kt.values()),
        "tumour_dice": statistics.fmean(tu.values()),
        "composite": result.composite_dice,
        "tumour_dice_min": min(tu.values()),
        "cases": {k: {"kidney_tumour": kt[k], "tumour": tu[k]} for k in sorted(kt)},
    }


def one_seed(args, train: Path, test: Path, seed: int, variant: str) -> dict:
    """Train and score one variant with one seed; the binary pair splits the budget in two."""
    extra = [*args.train_args.split(), "--seed", str(seed)]
    if variant == "regions":
        run, pred, trained = train_and_predict(
            args.work, f"regions_{seed}", train, test, args.minutes, ["--regions", "kits", *extra]
        )
        out = {"variant": variant, "seed": seed, "train_wall_s": trained, **scores(pred, test)}
        if args.tta_too:
            out["tta"] = tta_scores(run, args.work / "pred" / f"regions_{seed}_tta", test)
        return out
    half = args.minutes / 2
    _, kt, t1 = train_and_predict(
        args.work, f"kidney_tumour_{seed}", train, test, half, ["--foreground", "1,2", *extra]
    )
    _, tu, t2 = train_and_predict(
        args.work, f"tumour_{seed}", train, test, half, ["--foreground", "2", *extra]
    )
    pred = combine(kt, tu, args.work / "pred" / f"binary_pair_{seed}")
    return {"variant": variant, "seed": seed, "train_wall_s": t1 + t2, **scores(pred, test)}


def row(label: str, seed: int, seconds: float, r: dict) -> str:
    """One line of the printed table."""
    return (
        f"{label:8} {seed:>4} {seconds:>8.0f} {r['kidney_tumour_dice']:>8.4f} "
        f"{r['tumour_dice']:>8.4f} {r['tumour_dice_min']:>7.3f} {r['composite']:>7.4f}"
    )


def summary(runs: list[dict]) -> dict:
    """Per variant: the mean over its seeds of each score."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        out[variant] = {
            "seeds": [r["seed"] for r in mine],
            **{
                key: statistics.fmean(r[key] for r in mine)
                for key in ("kidney_tumour_dice", "tumour_dice", "composite")
            },
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=20.0, help="total budget of each variant")
    p.add_argument("--work", type=Path, default=Path("/tmp/voxseg-bench-regions"))
    p.add_argument(
        "--variants", nargs="+", choices=["regions", "binary"], default=["regions", "binary"]
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="repeats, run in turn")
    p.add_argument("--tag", default="", help="label of this run in the JSON's name")
    p.add_argument("--train-args", default="", help="extra `voxseg train` options of every model")
    p.add_argument("--tta-too", action="store_true", help="also score each region model with --tta")
    args = p.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED}: the real KiTS19 label maps are needed (shared data absent)")
    train = dataset(args.work, 0, 32, "train")
    test = dataset(args.work, 32, 18, "test")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"regions{'_' + args.tag if args.tag else ''}.json"
    record = {
        "tag": args.tag,
        "train_args": args.train_args.split(),
        "machine": {"cpu": platform.processor(), "cores": os.cpu_count()},
        "minutes_per_variant": args.minutes,
        "runs": [],
    }
    print(f"{'variant':8} {'seed':>4} {'train s':>8} {'kid+tum':>8} {'tumour':>8} {'t. min':>7} "
          f"{'comp.':>7}", flush=True)  # fmt: skip
    for seed in args.seeds:  # seed-major: a cut-short session still has pairs to compare
        for variant in args.variants:
            r = one_seed(args, train, test, seed, variant)
            print(row(variant, seed, r["train_wall_s"], r), flush=True)
            if "tta" in r:  # its seconds are prediction's
                print(row("  +tta", seed, r["tta"]["predict_wall_s"], r["tta"]), flush=True)
            record["runs"].append(r)
            record["mean_over_seeds"] = summary(record["runs"])
            out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")  # after each
    for variant, m in record["mean_over_seeds"].items():
        print(f"{variant:8} mean over seeds {m['seeds']}: kidney+tumour "
              f"{m['kidney_tumour_dice']:.4f} tumour {m['tumour_dice']:.4f} "
              f"composite {m['composite']:.4f}")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
