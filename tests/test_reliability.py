"""Nothing lost, nothing executed: kill -9, Ctrl-C, corrupted checkpoints, a full disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from voxseg.synth import write_dataset

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parents[1] / "src" / "voxseg"
TRAIN = [
    "--model",
    "seed",
    "--shape",
    "16",
    "16",
    "16",
    "--precision",
    "fp32",
    "--epochs",
    "8",
    "--batch-size",
    "2",
    "--steps-per-epoch",
    "3",
    "--patience",
    "0",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rel") / "data"
    write_dataset(root, 4, shape=(16, 16, 16), spacing=(2.5, 1.6, 1.6), seed=5)
    return root


def start(data: Path, run: Path, cache: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "voxseg",
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--cache",
        str(cache),
        *TRAIN,
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
    )


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def wait_for_epoch(run: Path, proc: subprocess.Popen, epoch: int) -> None:
    import json

    deadline = time.monotonic() + 600  # bounds a hang, not the machine's speed
    while time.monotonic() < deadline:
        try:
            if json.loads((run / "state.json").read_text(encoding="utf-8"))["epoch"] >= epoch:
                return
        except (OSError, ValueError, KeyError):
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"{run}: epoch {epoch} not reached within 600 s (a hang?)")


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    result = finish(start(data, run, run.parent / "cache"))
    assert result.returncode == 0, result.stderr
    return run


@pytest.mark.parametrize("kill_after_epoch", [1, 3])
def test_kill_9_then_resume_gives_the_uninterrupted_weights(
    tmp_path, data, reference, kill_after_epoch
):
    run = tmp_path / "run"
    proc = start(data, run, tmp_path / "cache")
    wait_for_epoch(run, proc, kill_after_epoch)
    time.sleep(0.3 * kill_after_epoch)  # land somewhere inside a later epoch or checkpoint write
    proc.kill()
    proc.wait()
    result = finish(start(data, run, tmp_path / "cache", "--resume"))
    assert result.returncode == 0, result.stderr
    assert_same_weights(run / "last.safetensors", reference / "last.safetensors")
    assert_same_weights(run / "model.safetensors", reference / "model.safetensors")
    assert not list(run.glob(".*part*")), "temporary files left behind"


def test_ctrl_c_saves_and_exits_130_then_resumes_exactly(tmp_path, data, reference):
    run = tmp_path / "run"
    proc = start(data, run, tmp_path / "cache")
    wait_for_epoch(run, proc, 2)
    proc.send_signal(signal.SIGINT)
    result = finish(proc)
    assert result.returncode == 130, result.stderr
    assert "--resume" in result.stderr and "Traceback" not in result.stderr
    result = finish(start(data, run, tmp_path / "cache", "--resume"))
    assert result.returncode == 0, result.stderr
    assert_same_weights(run / "last.safetensors", reference / "last.safetensors")


def test_corrupted_checkpoint_falls_back_to_the_previous_one(tmp_path, data, reference):
    run = tmp_path / "run"
    proc = start(data, run, tmp_path / "cache")
    wait_for_epoch(run, proc, 3)
    proc.send_signal(signal.SIGINT)
    assert finish(proc).returncode == 130
    last = run / "last.safetensors"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated
    result = finish(start(data, run, tmp_path / "cache", "--resume"))
    assert result.returncode == 0, result.stderr
    assert "damaged" in result.stderr and "resuming from epoch" in result.stderr
    assert_same_weights(run / "last.safetensors", reference / "last.safetensors")


def test_no_intact_checkpoint_is_reported(tmp_path, data):
    run = tmp_path / "run"
    proc = start(data, run, tmp_path / "cache")
    wait_for_epoch(run, proc, 2)
    proc.send_signal(signal.SIGINT)
    assert finish(proc).returncode == 130
    for f in run.glob("*.safetensors"):
        f.write_bytes(b"\0" * 64)
    result = finish(start(data, run, tmp_path / "cache", "--resume"))
    assert result.returncode == 2
    assert "no intact checkpoint" in result.stderr and "Traceback" not in result.stderr


def test_no_torch_load_on_user_files():
    """Weights come only from safetensors; nothing calls torch.load (pickle)."""
    offenders = [p for p in SRC.rglob("*.py") if "torch.load(" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_disk_full_while_writing_a_mask_leaves_nothing_half_written(
    tmp_path, monkeypatch, reference, data
):
    import SimpleITK as sitk

    from voxseg.cli import app

    def full_disk(image, path, *a, **k):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("Description: No space left on device")

    monkeypatch.setattr(sitk, "WriteImage", full_disk)
    out = tmp_path / "masks"
    result = CliRunner().invoke(
        app, ["predict", "--model", str(reference), "--input", str(data), "--output", str(out)]
    )
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.stderr and "Traceback" not in result.output
    assert not out.exists() or list(out.iterdir()) == []
