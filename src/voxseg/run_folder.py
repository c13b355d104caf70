"""The run folder: the one module that knows its file names and reads them as typed objects.

    config.json          RunConfig (everything inference needs)
    fingerprint.json     what training measured about the dataset (the planner's input)
    model.safetensors    best weights; its SHA-256 is in state.json
    last.safetensors     latest weights   } with state.json: what --resume continues from;
    optimizer.safetensors optimizer tensors} each rotated to *.prev.* before it is replaced
    state.json           TrainState: the commit point of a checkpoint
    metrics.csv          one EpochRecord per line
    curves.png           loss and validation Dice per epoch
    model.onnx           the best weights exported for ONNX Runtime (`voxseg.export`)
    .voxseg.lock         held (an OS lock, released by a crash too) while a command writes

Everyone else asks a `RunFolder` for paths and objects instead of spelling names.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxseg.atomic import write_text
from voxseg.config import RunConfig
from voxseg.errors import ConfigError, InputError, OutputExistsError

if TYPE_CHECKING:
    import torch


def _weights():
    """The weights module, imported on use: it needs torch, and a torch-free prediction
    (ONNX Runtime) reads the run's config through this module."""
    from voxseg import weights

    return weights


_CONFIG = "config.json"
_FINGERPRINT = "fingerprint.json"
_BEST = "model.safetensors"
_LAST = "last.safetensors"
_OPTIMIZER = "optimizer.safetensors"
_STATE = "state.json"
_METRICS = "metrics.csv"
_CURVES = "curves.png"
_ONNX = "model.onnx"
_CHECKPOINTED = (_LAST, _OPTIMIZER, _STATE)
_LOCK = ".voxseg.lock"


@dataclass
class EpochRecord:
    """One line of metrics.csv."""

    epoch: int
    steps: int
    train_loss: float
    val_loss: float
    val_dice: float
    val_score: float
    """The (smoothed) validation score the best model is picked on."""
    lr: float
    seconds: float
    """Wall-clock seconds of the epoch, validation included."""
    step_seconds: float = math.nan
    """Of which forward/backward/optimizer steps."""
    data_seconds: float = math.nan
    """Of which sampling and augmenting batches."""
    val_seconds: float = math.nan
    """Of which validation."""
    elapsed: float = math.nan
    """Seconds since training started (across resumes) at the end of the epoch."""


@dataclass
class TrainState:
    """Where training stands; saved as state.json at every checkpoint."""

    epoch: int = 0
    """Epochs completed."""
    step: int = 0
    best_score: float = -math.inf
    """Best (smoothed) validation score so far; -inf before the first validation."""
    best_dice: float = math.nan
    """The validation Dice of the best epoch (unsmoothed)."""
    best_epoch: int = 0
    bad_epochs: int = 0
    smoothed: float | None = None
    """Moving average of validation Dice (see TrainConfig.val_smoothing)."""
    best_region_dice: list[float] = field(default_factory=list)
    """Per region (model output), the validation Dice of the best epoch."""
    best_postprocess: list[dict[str, float]] = field(default_factory=list)
    """Per region, validation Dice of each keep-largest candidate ("0": keep all) at the
    best epoch."""
    elapsed: float = 0.0
    """Wall-clock seconds used so far, across resumes."""
    stopped: str = ""
    epoch_step: int = 0
    """Steps of the next epoch already done (a run interrupted mid-epoch resumes there)."""
    epoch_steps: int = 0
    """Length of the current epoch (with a time budget, epochs adapt their length)."""
    epoch_losses: list[float] = field(default_factory=list)
    history: list[EpochRecord] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    """SHA-256 of every checkpoint file, checked on resume."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["best_score"] = None if math.isinf(self.best_score) else self.best_score
        d["best_dice"] = None if math.isnan(self.best_dice) else self.best_dice
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainState:
        """A state as `to_dict` wrote it; ValueError naming the first field that is not (a
        hand-edited or damaged state.json must not steer a resumed run)."""
        _check_state(d)
        names = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in names}
        d["history"] = [EpochRecord(**h) for h in d.get("history", [])]
        if d.get("best_score") is None:
            d["best_score"] = -math.inf
        if d.get("best_dice") is None:
            d["best_dice"] = math.nan
        if isinstance(d.get("best_postprocess"), dict):  # before regions: one output
            d["best_postprocess"] = [d["best_postprocess"]] if d["best_postprocess"] else []
        return cls(**d)


_COUNTS = ("epoch", "step", "best_epoch", "bad_epochs", "epoch_step", "epoch_steps")


def _check_state(d: Any) -> None:
    def bad(name: str, problem: str) -> ValueError:
        return ValueError(f'field "{name}" = {d.get(name)!r}: {problem}')

    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    for name in _COUNTS:
        v = d.get(name, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad(name, "must be a whole number >= 0")
    elapsed = d.get("elapsed", 0.0)
    if (
        isinstance(elapsed, bool)
        or not isinstance(elapsed, int | float)
        or not (math.isfinite(elapsed) and elapsed >= 0)
    ):
        raise bad("elapsed", "must be a number of seconds >= 0")
    history = d.get("history", [])
    if not isinstance(history, list) or (history and len(history) != d.get("epoch", 0)):
        raise bad("epoch", f"does not match the {len(history)} epochs of its history")
    if d.get("best_epoch", 0) > d.get("epoch", 0):
        raise bad("best_epoch", "is later than the epochs completed")
    if d.get("epoch_steps", 0) and d.get("epoch_step", 0) > d["epoch_steps"]:
        raise bad("epoch_step", "is beyond the epoch's length (epoch_steps)")
    files = d.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise bad("files", "must map file names to SHA-256 hex digests")
    if not isinstance(d.get("stopped", ""), str):
        raise bad("stopped", "must be text")


@dataclass(frozen=True)
class Checkpoint:
    """An intact resumable checkpoint: the state, its optimizer values and file paths."""

    state: TrainState
    optimizer_values: dict[str, Any]
    last: Path
    optimizer: Path
    note: str = ""
    """Non-empty when the latest checkpoint was damaged and an older one is used."""


@dataclass(frozen=True)
class RunFolder:
    root: Path

    config_path = property(lambda self: self.root / _CONFIG)
    fingerprint_path = property(lambda self: self.root / _FINGERPRINT)
    best_weights = property(lambda self: self.root / _BEST)
    curves_path = property(lambda self: self.root / _CURVES)
    metrics_path = property(lambda self: self.root / _METRICS)
    onnx_model = property(lambda self: self.root / _ONNX)

    def files(self) -> list[Path]:
        """Every file a run writes that exists now (previous copies included)."""
        names = [_CONFIG, _FINGERPRINT, _BEST, _METRICS, _CURVES, _ONNX, *_CHECKPOINTED]
        paths = [self.root / n for n in names]
        paths += [_weights().previous(self.root / n) for n in _CHECKPOINTED]
        return [p for p in paths if p.exists()]

    # ---- configuration ---------------------------------------------------------------------
    def load_config(self) -> RunConfig:
        if not self.config_path.is_file():
            raise ConfigError(
                f"{self.root}: no {_CONFIG}; give a run folder made by `voxseg train`"
            )
        return RunConfig.load(self.config_path)

    def save_config(self, config: RunConfig) -> None:
        config.save(self.config_path)

    def save_fingerprint(self, data: dict) -> None:
        write_text(self.fingerprint_path, json.dumps(data, indent=2) + "\n")

    def load_fingerprint(self) -> dict | None:
        try:
            return json.loads(self.fingerprint_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    # ---- weights ---------------------------------------------------------------------------
    def best_weights_hash(self) -> str | None:
        """The SHA-256 state.json recorded for model.safetensors (None if not recorded)."""
        state = self.load_state()
        return state.files.get(_BEST) if state else None

    def load_best_weights(self, model: torch.nn.Module) -> None:
        _weights().load_model_weights(self.best_weights, model, self.best_weights_hash())

    def save_best_weights(self, model: torch.nn.Module, state: TrainState) -> None:
        state.files[_BEST] = _weights().save_model(self.best_weights, model)

    # ---- training state --------------------------------------------------------------------
    def load_state(self) -> TrainState | None:
        """The latest state.json, or None when there is none or it cannot be read."""
        data = _read_json(self.root / _STATE)
        if data is None:
            return None
        try:
            return TrainState.from_dict(data)
        except (TypeError, ValueError):
            return None

    def save_checkpoint(
        self,
        model: torch.nn.Module,
        optimizer_tensors: dict[str, torch.Tensor],
        optimizer_values: dict[str, Any],
        state: TrainState,
    ) -> None:
        """Write the resumable state; state.json is the commit point.

        Each file is rotated to `*.prev.*` before it is replaced, and state.json records the
        hash of every file, so a kill at any moment leaves one state whose files are intact.
        """
        last, optim, path = (self.root / n for n in _CHECKPOINTED)
        _weights().rotate(last)
        state.files[_LAST] = _weights().save_model(last, model)
        _weights().rotate(optim)
        state.files[_OPTIMIZER] = _weights().save_tensors(optim, optimizer_tensors)
        data = state.to_dict()
        data["optimizer"] = optimizer_values
        _weights().rotate(path)
        write_text(path, json.dumps(data, indent=2) + "\n")

    def latest_checkpoint(self) -> Checkpoint:
        """The newest saved state whose checkpoint files are intact (hash as recorded)."""
        state_path = self.root / _STATE
        problems = []
        for path in (state_path, _weights().previous(state_path)):
            data = _read_json(path)
            if data is None:
                problems.append(f"{path.name} unreadable")
                continue
            try:  # a hand-edited or damaged state must not steer the resumed run
                state = TrainState.from_dict(data)
            except (TypeError, ValueError) as exc:
                problems.append(f"{path.name}: {exc}")
                continue
            recorded = data.get("files", {})
            found = {
                name: _weights().find_intact(self.root / name, recorded[name])
                for name in (_LAST, _OPTIMIZER)
                if name in recorded
            }
            bad = [name for name in (_LAST, _OPTIMIZER) if found.get(name) is None]
            if not bad:
                problems += [
                    f"{name} damaged, its previous copy is intact"
                    for name, p in found.items()
                    if p != self.root / name
                ]
                note = ""
                if problems:
                    note = f"latest checkpoint damaged ({'; '.join(problems)}); "
                    note += f"resuming from epoch {data.get('epoch')}"
                values = data.pop("optimizer", {})
                return Checkpoint(state, values, found[_LAST], found[_OPTIMIZER], note)
            problems.append(f"{', '.join(bad)} of {path.name} corrupted or missing")
        if not state_path.exists():
            raise ConfigError(
                f"{self.root}: nothing to resume (no {_STATE}); start without --resume"
            )
        raise ConfigError(
            f"{self.root}: no intact checkpoint to resume ({'; '.join(problems)}); "
            "start afresh with --overwrite"
        )

    # ---- metrics ---------------------------------------------------------------------------
    def write_metrics(self, history: list[EpochRecord]) -> None:
        cols = [f.name for f in dataclasses.fields(EpochRecord)]
        lines = [",".join(cols)]
        for rec in history:
            values = (getattr(rec, c) for c in cols)
            lines.append(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in values))
        write_text(self.metrics_path, "\n".join(lines) + "\n")

    def read_metrics(self) -> list[EpochRecord]:
        """The epochs of metrics.csv ([] when absent); InputError naming a bad line.

        Columns an older voxseg did not write read as NaN.
        """
        if not self.metrics_path.is_file():
            return []
        fields = {f.name: f.type for f in dataclasses.fields(EpochRecord)}
        records = []
        with open(self.metrics_path, newline="", encoding="utf-8") as fh:
            for line, row in enumerate(csv.DictReader(fh), start=2):
                try:
                    values = {
                        k: int(row[k]) if fields[k] == "int" else float(row.get(k, "nan") or "nan")
                        for k in fields
                        if k in row or fields[k] != "int"
                    }
                    if "val_score" not in row:  # written before smoothing existed
                        values["val_score"] = values["val_dice"]
                    records.append(EpochRecord(**values))
                except (KeyError, TypeError, ValueError) as exc:
                    raise InputError(
                        f"{self.metrics_path}:{line}: not a voxseg metrics row ({exc}); "
                        f"expected columns {','.join(fields)}"
                    ) from exc
        return records


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---- one writer at a time ----------------------------------------------------------------------
def _flock(handle, shared: bool) -> bool:
    """Try to take the OS lock on an open file without waiting; False when another process
    holds it. Where `fcntl` is missing (Windows) there is no lock and this says True."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def writing(run: RunFolder, command: str):
    """Hold the run folder's writer lock while `command` writes into it.

    A second writer (two `voxseg train --out run`, a train and an export) is refused with one
    line instead of mixing the two runs' files. The lock is the OS's, so a crash or a kill
    releases it. A folder this call created is removed again if the command fails before it
    wrote a checkpoint (a failed start leaves nothing behind).
    """
    if run.root.exists() and not run.root.is_dir():
        raise OutputExistsError(f"{run.root}: is a file; give a folder for the run")
    created = not run.root.exists()
    run.root.mkdir(parents=True, exist_ok=True)
    lock = run.root / _LOCK
    handle = open(lock, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    try:
        if not _flock(handle, shared=False) or not _still_named(lock, handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise OutputExistsError(
                f"{run.root}: {holder} is writing this run folder; wait for it to finish, "
                "or choose another folder"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"voxseg {command} (pid {os.getpid()})\n")
        handle.flush()
        try:
            yield run
        except BaseException:
            if created and run.load_state() is None and not run.best_weights.exists():
                for path in run.files():
                    path.unlink(missing_ok=True)
                lock.unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    run.root.rmdir()  # only if nothing else is in it
            raise
        finally:
            lock.unlink(missing_ok=True)  # still held: no one else can be using this file
    finally:
        handle.close()


def _still_named(lock: Path, handle) -> bool:
    """The locked file is still the one at `lock` (not one a finishing writer just
    removed): otherwise two processes could each hold a lock on a different file."""
    try:
        return os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
    except OSError:
        return False


def writer_of(run: RunFolder) -> str | None:
    """Who holds the run's writer lock now ('voxseg train (pid 12)'), or None."""
    lock = run.root / _LOCK
    try:
        handle = open(lock, encoding="utf-8")  # noqa: SIM115
    except OSError:
        return None
    with handle:
        if _flock(handle, shared=True):
            return None
        return handle.read().strip() or "another process"
