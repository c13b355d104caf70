"""Training: overfitting works, early stopping restores the best epoch, resume is exact."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import blob_case, prepared_cases
from voxseg.api import fit
from voxseg.config import InferConfig, ModelConfig, PreprocessConfig, RunConfig, TrainConfig
from voxseg.models import build_model
from voxseg.run_folder import RunFolder
from voxseg.train import loop
from voxseg.train.loop import TrainHooks, lr_at
from voxseg.train.validation import ValResult

SMALL_UNET = {"base_channels": 4, "depth": 2, "max_channels": 16}


def _config(**train) -> RunConfig:
    t = TrainConfig(
        patch_size=(16, 16, 16),
        batch_size=2,
        steps_per_epoch=3,
        epochs=4,
        lr=3e-3,
        precision="fp32",
        patience=0,
        augment="full",
    )
    return RunConfig(
        preprocess=PreprocessConfig(spacing=(1.0, 1.0, 1.0)),
        model=ModelConfig("unet", dict(SMALL_UNET)),
        train=replace(t, **train),
        infer=InferConfig(window=(16, 16, 16)),
    )


def _run(tmp: Path, config: RunConfig, cases, resume=False, should_stop=None, clock=None):
    torch.manual_seed(config.train.seed)
    model = build_model(config.model.name, **config.model.options)
    tmp.mkdir(exist_ok=True)
    state = loop.train(
        model,
        config,
        cases[:-1],
        cases[-1:],
        RunFolder(tmp),
        device=torch.device("cpu"),
        resume=resume,
        hooks=TrainHooks(should_stop=should_stop, clock=clock or time.monotonic),
    )
    return model, state


def test_lr_schedule_is_pure_and_bounded():
    assert lr_at(0.0, 1e-3, "cosine") == pytest.approx(1e-3)
    assert lr_at(1.0, 1e-3, "cosine") == pytest.approx(1e-5)
    assert lr_at(1.7, 1e-3, "cosine") == pytest.approx(1e-5)  # past the budget: floor
    assert lr_at(0.5, 1e-3, "constant") == 1e-3


def test_overfit_one_case_reaches_high_dice(tmp_path: Path):
    cases = prepared_cases(1)
    config = _config(
        epochs=1, steps_per_epoch=60, augment="off", foreground_oversample=0.0, batch_size=1
    )
    model, state = _run(tmp_path, config, cases + cases)  # validate on the training case itself
    assert state.best_dice > 0.9, state.history


def test_resume_after_interruption_gives_identical_weights(tmp_path: Path):
    cases = prepared_cases(3)
    config = _config()
    _run(tmp_path / "full", config, cases)
    # Interrupt at the first step of epoch 3 (3 steps per epoch), then resume to the end.
    calls = iter(range(100))
    _run(tmp_path / "part", config, cases, should_stop=lambda late: next(calls) >= 6)
    state = json.loads((tmp_path / "part" / "state.json").read_text(encoding="utf-8"))
    assert state["epoch"] == 2
    _run(tmp_path / "part", config, cases, resume=True)
    full = load_file(str(tmp_path / "full" / "last.safetensors"))
    part = load_file(str(tmp_path / "part" / "last.safetensors"))
    for k in full:
        torch.testing.assert_close(part[k], full[k], rtol=0, atol=0)
    rows = (tmp_path / "part" / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 5  # header + 4 epochs, no duplicates


def test_early_stopping_restores_best_epoch(tmp_path: Path, monkeypatch):
    cases = prepared_cases(3)
    dices = iter([0.5, 0.8, 0.6, 0.7, 0.4, 0.3])

    def fake_validate(model, *a, **k):
        d = next(dices)
        return ValResult(np.array([[d]]), np.array([0.1]), np.array([[[d, d, d, d]]]))

    snapshots = {}
    real_save = RunFolder.save_best_weights

    def spy_save(self, model, state):
        snapshots["best"] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_save(self, model, state)

    monkeypatch.setattr(loop, "validate_sharded", fake_validate)
    monkeypatch.setattr(RunFolder, "save_best_weights", spy_save)
    model, state = _run(tmp_path, _config(epochs=6, patience=2), cases)
    assert state.best_epoch == 2 and state.epoch == 4
    assert "early stopping" in state.stopped
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, snapshots["best"][k])


def test_time_budget_stops_at_a_step_boundary(tmp_path: Path, monkeypatch):
    """Budget 10 s, steps 1 s, validation 2 s. Epoch 1: the 3 planned steps, validated at 5 s.
    Epoch 2 is planned at 10 steps (the minimum), but after 3 of them (8 s) one more step and
    its validation would end at 11 s: training stops there, mid-epoch, and the partial epoch
    is validated, ending exactly on the budget."""
    _, state = _timed_run(tmp_path, monkeypatch, 10.0, 1.0, 2.0, epochs=100, steps_per_epoch=3)
    assert state.stopped == "time budget"
    assert [r.steps for r in state.history] == [3, 3] and state.step == 6
    assert state.elapsed == pytest.approx(10.0)
    saved = json.loads((tmp_path / "state.json").read_text(encoding="utf-8"))
    assert (saved["epoch"], saved["step"], saved["stopped"]) == (2, 6, "time budget")


def test_training_is_deterministic(tmp_path: Path):
    cases = prepared_cases(3)
    a, _ = _run(tmp_path / "a", _config(epochs=1), cases)
    b, _ = _run(tmp_path / "b", _config(epochs=1), cases)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)


def test_fit_array_api_like_keras(tmp_path: Path):
    x = (
        np.stack([blob_case((16, 16, 16), seed=i)[0] for i in range(3)]).astype(np.float32)[
            ..., None
        ]
        / 200
    )
    y = np.stack([blob_case((16, 16, 16), seed=i)[1] > 0 for i in range(3)]).astype(np.float32)[
        ..., None
    ]
    fitted = fit(
        x[:2],
        y[:2],
        validation_data=(x[2:], y[2:]),
        model="seed",
        epochs=2,
        batch_size=2,
        patience=3,
    )
    probs = fitted.predict(x[2:])
    assert probs.shape == (1, 16, 16, 16, 1) and probs.min() >= 0 and probs.max() <= 1
    run = fitted.save(tmp_path / "run")
    for f in ("model.safetensors", "config.json", "last.safetensors", "metrics.csv", "curves.png"):
        assert (run / f).is_file(), f
    assert json.loads((run / "config.json").read_text(encoding="utf-8"))["model"]["name"] == "seed"


class FakeClock:
    """Time that moves only when the test says: a step costs `step_s`, a validation `val_s`."""

    def __init__(self, step_s: float, val_s: float):
        self.now, self.step_s, self.val_s = 1000.0, step_s, val_s

    def __call__(self) -> float:
        return self.now


def _fake_time(monkeypatch, step_s: float, val_s: float) -> FakeClock:
    """A fake clock that each optimizer step and each validation advance by a fixed amount."""
    clock = FakeClock(step_s, val_s)
    real_step, real_validate = loop.train_step, loop.validate_sharded

    def timed_step(*a, **k):
        clock.now += clock.step_s
        return real_step(*a, **k)

    def timed_validate(*a, **k):
        clock.now += clock.val_s
        return real_validate(*a, **k)

    monkeypatch.setattr(loop, "train_step", timed_step)
    monkeypatch.setattr(loop, "validate_sharded", timed_validate)
    return clock


def _timed_run(tmp: Path, monkeypatch, budget_s: float, step_s: float, val_s: float, **train):
    """A budgeted run on a fake clock, so the budget logic is checked exactly whatever the
    machine's speed."""
    clock = _fake_time(monkeypatch, step_s, val_s)
    config = _config(max_minutes=budget_s / 60, patience=0, augment="off", **train)
    _, state = _run(tmp, config, prepared_cases(3), clock=clock)
    return config, state


@pytest.mark.parametrize(
    ("budget_s", "step_s", "val_s"),
    [(60.0, 0.5, 2.0), (600.0, 2.0, 3.0)],  # epochs capped by the budget share / by validation
)
def test_time_budget_is_spent_and_the_schedule_follows_the_clock(
    tmp_path: Path, monkeypatch, budget_s, step_s, val_s
):
    """With --max-minutes the clock ends training (not an epoch count): the run stops at the
    last step whose validation still fits, the learning rate follows the elapsed share of the
    budget, and epochs after the first are sized from the measured step and validation time."""
    config, state = _timed_run(
        tmp_path, monkeypatch, budget_s, step_s, val_s, epochs=10_000, steps_per_epoch=2
    )
    assert state.stopped == "time budget"
    # Stopped before a step that could not be followed by its validation, not earlier.
    assert budget_s - step_s - val_s < state.elapsed <= budget_s, state.elapsed
    history = state.history
    assert history[0].steps == 2  # the planned first epoch
    # Then validation ~VAL_SHARE of an epoch, capped at MAX_EPOCH_SHARE of the budget.
    by_share = round(val_s * (1 - loop.VAL_SHARE) / loop.VAL_SHARE / step_s)
    cap = round(loop.MAX_EPOCH_SHARE * budget_s / step_s)
    expected = min(by_share, cap)
    assert [r.steps for r in history[1:-1]] == [expected] * (len(history) - 2)
    assert all(r.val_seconds == val_s for r in history)
    # Each epoch's last learning rate is the cosine at the share of training time spent
    # before its last step; once a validation has been timed, the final one's time is
    # reserved (it is not training time).
    for r in history:
        before_last_step = r.elapsed - val_s - step_s
        share = before_last_step / (budget_s - (val_s if r.epoch > 1 else 0.0))
        assert r.lr == pytest.approx(lr_at(share, config.train.lr, "cosine"), rel=1e-9)
    assert history[-1].lr < 0.1 * config.train.lr
    rows = RunFolder(tmp_path).read_metrics()
    assert [r.steps for r in rows] == [r.steps for r in history]


def test_a_resumed_budget_counts_the_time_already_spent(tmp_path: Path, monkeypatch):
    """A run cut short and resumed spends the rest of the same budget, not a new one."""
    budget_s = 30.0
    calls = iter(range(1000))
    config = _config(max_minutes=budget_s / 60, patience=0, augment="off", epochs=10_000)
    clock = _fake_time(monkeypatch, 0.5, 0.0)  # validation takes no (fake) time here
    cases = prepared_cases(3)

    def go(resume, should_stop=None):
        return _run(tmp_path, config, cases, resume, should_stop, clock)[1]

    first = go(False, should_stop=lambda late: late or next(calls) >= 10)
    assert first.stopped == "time budget" and first.elapsed == pytest.approx(5.0)
    clock.now += 3600.0  # the machine was off for an hour: that is not training time
    second = go(True)
    assert second.stopped == "time budget"
    assert budget_s - 1.5 < second.elapsed <= budget_s
    assert second.step == round(second.elapsed / 0.5)  # every fake second was a step


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("lr", -1.0, "lr"),
        ("batch_size", 0, "batch"),
        ("epochs", 0, "epochs"),
        ("loss", "l2", "loss"),
    ],
)
def test_fit_validates_its_options_like_the_command_line(option, value, named):
    from voxseg.errors import ConfigError

    x = np.zeros((2, 16, 16, 16, 1), dtype=np.float32)
    with pytest.raises(ConfigError, match=named):
        fit(x, x, **{option: value})


def test_validation_windows_do_not_overlap_whatever_prediction_uses(monkeypatch):
    """Validation ranks epochs: it tiles each case once (prediction overlaps its windows)."""
    from voxseg.train import validation

    seen = []
    real = validation.predict_probabilities

    def spy(*a, **k):
        seen.append(k["overlap"])
        return real(*a, **k)

    monkeypatch.setattr(validation, "predict_probabilities", spy)
    config = _config()
    assert config.infer.overlap > 0
    torch.manual_seed(0)
    model = build_model(config.model.name, **config.model.options)
    result = validation.validate(model, prepared_cases(2), config, torch.device("cpu"), None)
    assert seen == [0.0, 0.0] and result.dice.shape == (2, 1)
