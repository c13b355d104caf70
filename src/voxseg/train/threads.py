"""Intra-op threads on a busy CPU: when another process keeps one core busy, a thread that
shares that core makes every parallel region wait for it, and fewer threads run faster. The
tuner keeps re-checking while training runs: every so often it tries one thread fewer (or
back to all of them) for a few steps and keeps whichever took less time per step."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

WINDOW = 8
"""Steps timed per candidate (the first after a switch is not counted)."""
PERIOD = 150
"""Steps between two trials."""
MARGIN = 0.9
"""The other thread count must be this much faster (per step) to be kept."""


@dataclass
class ThreadTuner:
    most: int
    """Threads when the machine is quiet (torch's default: one per core)."""
    current: int = 0
    _phase: str = "settle"
    _steps: int = 0
    _trials: int = 0
    _times: dict[int, list[float]] = field(default_factory=dict)
    switches: list[tuple[int, int]] = field(default_factory=list)
    """(step count, threads) at each change kept, for the record."""

    def __post_init__(self) -> None:
        self.current = self.current or self.most

    @classmethod
    def for_device(cls, device: torch.device) -> ThreadTuner | None:
        threads = torch.get_num_threads()
        return cls(threads) if device.type == "cpu" and threads > 1 else None

    def _other(self) -> int:
        return self.most - 1 if self.current == self.most else self.most

    def _use(self, threads: int) -> None:
        torch.set_num_threads(threads)

    def observe(self, seconds: float, step: int) -> bool:
        """Feed one step's wall time; may change torch's thread count for the next steps.
        Returns True when a trial ends with a change."""
        self._steps += 1
        if self._phase == "settle":
            if self._steps >= (PERIOD if self._trials else 2 * WINDOW):
                self._phase, self._steps, self._times = "measure", 0, {}
            return False
        threads = self.current if self._phase == "measure" else self._other()
        if self._steps > 1:  # the first step after a switch pays for the change
            self._times.setdefault(threads, []).append(seconds)
        if self._steps <= WINDOW:
            return False
        if self._phase == "measure":
            self._phase, self._steps = "trial", 0
            self._use(self._other())
            return False
        mine = statistics.median(self._times[self.current])
        other = statistics.median(self._times[self._other()])
        changed = other < MARGIN * mine
        if changed:
            self.current = self._other()
            self.switches.append((step, self.current))
        self._use(self.current)
        self._phase, self._steps, self._trials = "settle", 0, self._trials + 1
        return changed

    def restore(self) -> None:
        self._use(self.most)
