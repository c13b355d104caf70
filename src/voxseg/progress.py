"""The one shape of progress reports: synthesis, case preparation, training, prediction and
evaluation all call an `on_progress(Step)`; the CLI draws every kind with the same bar."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    task: str
    """What is under way ("preparing cases", "epoch 3", "predicting", ...)."""
    done: int
    total: int
    detail: str = ""
    """A short status to show beside the bar (loss, validation Dice, time left, a case id)."""


ProgressFn = Callable[[Step], None]


def ignore(_step: Step) -> None:
    """The default `on_progress`: report nothing."""
