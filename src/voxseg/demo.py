"""`make demo`: the whole job on synthetic data, ending with a report a person can open."""

from __future__ import annotations

from pathlib import Path

from voxseg.evaluation import evaluate, write_results
from voxseg.prediction import iter_predictions, load_predictor
from voxseg.report import write_report
from voxseg.synth import write_dataset
from voxseg.train.run import TrainOptions, run_training

TEST_CASES = 4
TEST_SEED = 10_000
"""Test cases are drawn with seeds far from the training ones: unseen anatomy."""


def run_demo(out: Path, *, cases: int, minutes: float, ui) -> Path:
    out = Path(out)
    data, test = out / "data", out / "test"
    advance = ui.task("synthesising", cases + TEST_CASES)
    write_dataset(data, cases, seed=0, overwrite=True, progress=lambda _i: advance())
    write_dataset(test, TEST_CASES, seed=TEST_SEED, overwrite=True, progress=lambda _i: advance())
    ui.log(
        f"synthetic CT: {cases} training cases in {data}, {TEST_CASES} unseen test cases in {test}"
    )

    run = out / "run"
    _, state = run_training(
        TrainOptions(
            data=data, out=run, max_minutes=minutes, overwrite=True, cache_dir=out / "cache"
        ),
        ui,
    )
    ui.log(f"training stopped ({state.stopped}); best validation Dice {state.best_dice:.3f}")

    predictor = load_predictor(run)
    pred = out / "pred"
    advance = ui.task("predicting", TEST_CASES)
    for _ in iter_predictions(predictor, test, pred, overwrite=True):
        advance()
    result = evaluate(pred, test)
    write_results(result, out / "metrics.json")
    ui.log(
        f"test Dice (mean over {len(result.cases)} unseen cases): {result.summary['dice'].mean:.3f}"
    )
    return write_report(run, out / "report.html", pred_dir=pred, gt=test, overwrite=True)
