"""`make demo`: the whole job on synthetic data, ending with a report a person can open."""

from __future__ import annotations

from pathlib import Path

from voxseg.errors import OutputExistsError
from voxseg.evaluation import evaluate, write_results
from voxseg.prediction import iter_predictions, load_predictor
from voxseg.report import write_report
from voxseg.synth import write_dataset
from voxseg.train.loop import TrainHooks
from voxseg.train.run import TrainOptions, run_training

TEST_CASES = 4
TEST_SEED = 10_000
"""Test cases are drawn with seeds far from the training ones: unseen anatomy."""


def run_demo(
    out: Path, *, cases: int, minutes: float, hooks: TrainHooks, overwrite: bool = False
) -> Path:
    """Everything goes under `out`, which must be new or empty unless `overwrite`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise OutputExistsError(
            f"{out}: already exists and is not empty; give a new --out, or --overwrite to "
            "replace what is there"
        )
    data, test = out / "data", out / "test"
    write_dataset(data, cases, seed=0, overwrite=True, on_progress=hooks.on_progress)
    write_dataset(test, TEST_CASES, seed=TEST_SEED, overwrite=True, on_progress=hooks.on_progress)
    hooks.log(
        f"synthetic CT: {cases} training cases in {data}, {TEST_CASES} unseen test cases in {test}"
    )

    run = out / "run"
    options = TrainOptions(
        data=data,
        out=run,
        overrides={"train.max_minutes": minutes},
        overwrite=True,
        cache_dir=out / "cache",
    )
    _, state = run_training(options, hooks)
    hooks.log(f"training stopped ({state.stopped}); best validation Dice {state.best_dice:.3f}")

    pred = out / "pred"
    predictor = load_predictor(run)
    for _ in iter_predictions(predictor, test, pred, overwrite=True, on_progress=hooks.on_progress):
        pass
    result = evaluate(pred, test, on_progress=hooks.on_progress)
    write_results(result, out / "metrics.json", overwrite=True)
    hooks.log(
        f"test Dice (mean over {len(result.cases)} unseen cases): {result.summary['dice'].mean:.3f}"
    )
    return write_report(run, out / "report.html", pred_dir=pred, gt=test, overwrite=True)
