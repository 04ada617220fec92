"""Kill loop: SIGKILL a real training process again and again, at random moments and while it writes
its checkpoint, resume each time; the final weights must equal an uninterrupted run's, bit for bit."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fmnist_deploy.training.checkpoint import load_checkpoint, load_weights

LIMIT, SEED = 600, 3
KILLS = 20
SOAK_KILLS = 100


def _command(out: Path, data_root: Path, resume: bool, epochs: int) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "fmnist_deploy.training.cli",
        "--output",
        str(out),
        "--epochs",
        str(epochs),
        "--limit",
        str(LIMIT),
        "--seed",
        str(SEED),
        "--data-dir",
        str(data_root),
        "--device",
        "cpu",
    ]
    return [*args, "--resume"] if resume else args


def _temporaries(out: Path) -> list[str]:
    return [name for name in os.listdir(out) if name.endswith(".tmp")] if out.is_dir() else []


def _kill_once(out: Path, data_root: Path, rng: random.Random, during_write: bool, epochs: int) -> str:
    """Start a training process, SIGKILL it, and say where it was; '' if it finished first."""
    checkpoint = out / "checkpoint.pt"
    resume = checkpoint.is_file()
    stamp = checkpoint.stat().st_mtime_ns if resume else 0
    proc = subprocess.Popen(
        _command(out, data_root, resume, epochs), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    where = "after an epoch"
    delay = rng.uniform(0, 0.03)
    while time.monotonic() < deadline and proc.poll() is None:
        if during_write and _temporaries(out):
            where = "while writing the checkpoint"
            break
        if checkpoint.is_file() and checkpoint.stat().st_mtime_ns != stamp:
            time.sleep(delay)  # a random moment inside the next epoch
            break
        time.sleep(0.0005)
    if proc.poll() is not None:
        return ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return where


def _kill_loop(kills: int, tmp_path: Path, data) -> None:
    reference = tmp_path / "reference"
    epochs = 2 * kills + 20  # each kill costs at most the epoch in progress; some land before any progress
    # The uninterrupted run is the same command in a fresh process, as every killed run is: CPU weights
    # depend on torch's intra-op thread count, and this test process's count is whatever earlier tests
    # left (an in-process fmnist-predict sets 1), so a reference trained here could differ from any
    # fresh process's run by that alone.
    uninterrupted = subprocess.run(
        _command(reference, data.root, resume=False, epochs=epochs),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    expected = load_weights(reference / "fmnist_mlp.pt").model
    out = tmp_path / "killed"
    rng = random.Random(0)
    moments = []
    while len(moments) < kills:
        where = _kill_once(out, data.root, rng, during_write=len(moments) % 2 == 0, epochs=epochs)
        if not where:
            pytest.fail(f"the run finished after {len(moments)} kills; give it more epochs")
        moments.append(where)
        if (out / "checkpoint.pt").is_file():
            load_checkpoint(out / "checkpoint.pt")  # whatever a kill left must load
    final = subprocess.run(
        _command(out, data.root, resume=True, epochs=epochs), capture_output=True, text=True, timeout=300, check=False
    )
    assert final.returncode == 0, final.stderr
    weights = load_weights(out / "fmnist_mlp.pt").model
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected), "weights differ from the uninterrupted run"
    assert not _temporaries(out), "stale temporary files survived the resumed run"
    during = moments.count("while writing the checkpoint")
    print(
        f"\nkill loop: {len(moments)} SIGKILLs ({during} while the checkpoint was being written), "
        f"resumed each time; final weights bit-identical to the uninterrupted run"
    )


def test_sigkill_loop_resumes_to_the_uninterrupted_weights(tmp_path: Path, data, capsys) -> None:
    with capsys.disabled():
        _kill_loop(KILLS, tmp_path, data)


@pytest.mark.soak
def test_sigkill_soak(tmp_path: Path, data, capsys) -> None:
    with capsys.disabled():
        _kill_loop(SOAK_KILLS, tmp_path, data)
