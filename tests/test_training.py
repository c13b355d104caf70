"""Training: overfitting works, early stopping restores the best epoch, resume is exact."""

from __future__ import annotations

import json
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


def _run(tmp: Path, config: RunConfig, cases, resume=False, should_stop=None):
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
        hooks=TrainHooks(should_stop=should_stop),
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


def test_time_budget_stops_at_a_step_boundary(tmp_path: Path):
    _, state = _run(tmp_path, _config(epochs=100, max_minutes=1e-6), prepared_cases(3))
    assert state.stopped == "time budget"


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


def test_time_budget_is_spent_and_the_schedule_follows_the_clock(tmp_path: Path):
    """With --max-minutes the clock ends training (not an epoch count), the learning rate
    decays with the elapsed share of the budget, and epochs adapt their length."""
    budget_s = 4.0
    config = _config(
        epochs=10_000, max_minutes=budget_s / 60, steps_per_epoch=2, patience=0, augment="off"
    )
    _, state = _run(tmp_path, config, prepared_cases(3))
    assert state.stopped == "time budget"
    assert budget_s * 0.8 <= state.elapsed <= budget_s * 1.5, state.elapsed
    lrs = [r.lr for r in state.history]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.5 * config.train.lr
    # Later epochs are sized so validation stays a bounded share of the time.
    assert any(r.steps != 2 for r in state.history[1:])
    rows = RunFolder(tmp_path).read_metrics()
    assert all(r.step_seconds > 0 and r.val_seconds > 0 for r in rows)
