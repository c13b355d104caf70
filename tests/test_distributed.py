"""DDP on CPU with gloo, launched by torchrun exactly as a user would."""

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

from voxseg.synth import write_dataset

pytestmark = pytest.mark.slow
TRAIN = [
    "--model",
    "unet",
    "--shape",
    "32",
    "32",
    "32",
    "--loss",
    "bce",
    "--optimizer",
    "sgd",
    "--precision",
    "fp32",
    "--epochs",
    "2",
    "--steps-per-epoch",
    "2",
    "--batch-size",
    "2",
    "--patience",
    "0",
]


def torchrun(nproc: int, *args, **kw) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "voxseg",
        *map(str, args),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        **kw,
    )


HANG_GUARD_S = 600
"""Seconds after which a subprocess that has not ended is taken to hang."""


def voxseg(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "voxseg", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=600,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp") / "data"
    write_dataset(root, 5, shape=(24, 24, 24), spacing=(2.5, 1.6, 1.6), seed=3)
    return root


def test_two_processes_reach_the_weights_of_one(tmp_path: Path, data: Path):
    one = voxseg(
        "train", "--data", data, "--out", tmp_path / "one", "--cache", tmp_path / "c", *TRAIN
    )
    assert one.returncode == 0, one.stderr
    proc = torchrun(
        2, "train", "--data", data, "--out", tmp_path / "two", "--cache", tmp_path / "c", *TRAIN
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    a = load_file(str(tmp_path / "one" / "last.safetensors"))
    b = load_file(str(tmp_path / "two" / "last.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    # Only rank 0 wrote files: one metrics row per epoch, no duplicates.
    assert len((tmp_path / "two" / "metrics.csv").read_text(encoding="utf-8").splitlines()) == 3


def test_sharded_prediction_writes_the_same_files(tmp_path: Path, data: Path):
    run = tmp_path / "run"
    assert (
        voxseg("train", "--data", data, "--out", run, "--cache", tmp_path / "c", *TRAIN).returncode
        == 0
    )
    single = voxseg("predict", "--model", run, "--input", data, "--output", tmp_path / "p1")
    assert single.returncode == 0, single.stderr
    proc = torchrun(2, "predict", "--model", run, "--input", data, "--output", tmp_path / "p2")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    names = sorted(p.name for p in (tmp_path / "p1").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "p2").iterdir()) and len(names) == 5
    from voxseg.data.io import read_image

    for name in names:
        np.testing.assert_array_equal(
            read_image(tmp_path / "p1" / name)[0], read_image(tmp_path / "p2" / name)[0]
        )


def _workers(parent: int) -> dict[int, int]:
    """rank -> pid of torchrun's worker processes."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            env = dict(
                kv.split("=", 1)
                for kv in (entry / "environ").read_text(encoding="utf-8").split("\0")
                if "=" in kv
            )
        except (OSError, ValueError):
            continue
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def test_a_killed_rank_ends_the_job(tmp_path: Path, data: Path):
    args = [
        a if a != "2" or i != TRAIN.index("--epochs") + 1 else "1000" for i, a in enumerate(TRAIN)
    ]
    proc = torchrun(
        2, "train", "--data", data, "--out", tmp_path / "run", "--cache", tmp_path / "c", *args
    )
    # HANG_GUARD_S bounds a hang, not the machine's speed: a slow machine only waits longer.
    deadline = time.monotonic() + HANG_GUARD_S
    while not (tmp_path / "run" / "state.json").exists():  # wait until training runs
        assert proc.poll() is None, proc.stdout.read()
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no epoch finished within {HANG_GUARD_S} s: {proc.stdout.read()}")
        time.sleep(0.5)
    workers = _workers(proc.pid)
    assert set(workers) == {0, 1}
    os.kill(workers[1], signal.SIGKILL)
    try:
        proc.communicate(timeout=HANG_GUARD_S)  # torchrun tears the job down
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job kept running after one of its ranks was killed (a hang)")
    assert proc.returncode != 0
