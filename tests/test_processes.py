"""The six installed commands started as a user starts them: real processes of the console scripts beside this
interpreter, on their main path, with Ctrl-C during start-up (exit 130, no traceback) and with a reader that has
gone away (a closed pipe: a pipeline's normal end, exit 0, quietly, nothing blamed on the command's own files)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from fmnist_deploy import load
from tests.conftest import ARTIFACTS, console_script

SAMPLES = ARTIFACTS / "samples"
SAMPLE = SAMPLES / "0000_ankle_boot.png"
COMMANDS = ("fmnist-train", "fmnist-export", "fmnist-predict", "fmnist-bench", "fmnist-batch", "fmnist-serve")


def _arguments(name: str, tmp_path: Path, data_root: Path) -> list[str]:
    """A real piece of work for each command, small enough for a test."""
    return {
        "fmnist-train": ["--limit", "200", "--epochs", "2", "--device", "cpu", "--output", str(tmp_path / "run")],
        "fmnist-export": ["--verify", str(ARTIFACTS / "fmnist_mlp.onnx")],
        "fmnist-predict": [str(SAMPLES)],
        "fmnist-bench": ["latency", "--backend", "numpy", "--sizes", "1", "--seconds", "0.01"]
        + ["--min-repetitions", "2", "--e2e-max-batch", "0", "--ceiling-rounds", "0"]
        + ["--data-dir", str(data_root), "--output", str(tmp_path / "bench")],
        "fmnist-batch": [str(SAMPLES), "--output", str(tmp_path / "rows.jsonl"), "--actors", "1"],
        "fmnist-serve": ["--port", "0"],
    }[name]


def _not_a_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]


def _stderr_lines(stderr: str) -> list[str]:
    """stderr without the import-time profile (PYTHONPROFILEIMPORTTIME) and Ray's own log lines."""
    return [line for line in stderr.splitlines() if not line.startswith("import time:") and " INFO " not in line]


@pytest.mark.parametrize("name", COMMANDS)
def test_ctrl_c_during_start_up_exits_130_without_a_traceback(name: str, tmp_path: Path, data) -> None:
    """SIGINT while the command's own modules are being imported. The event: the interpreter's import-time profile
    (PYTHONPROFILEIMPORTTIME, on stderr) reports the launch layer imported and then a first module of the command's
    import, which runs inside the launch layer's Ctrl-C handling."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.Popen(
        [console_script(name), *_arguments(name, tmp_path, data.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    launched = signalled = False
    deadline = time.monotonic() + 120
    while not signalled and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 1.0)
        line = proc.stderr.readline() if ready else "import time:"
        if not line:
            break  # the process ended
        if line.startswith("import time:") and launched and line.split("|")[-1].strip() != "fmnist_deploy.launch":
            proc.send_signal(signal.SIGINT)
            signalled = True
        launched = launched or line.split("|")[-1].strip() == "fmnist_deploy.launch"
    if not signalled:
        proc.kill()
        pytest.fail(f"{name}: no import after the launch layer's within 120 s")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, _stderr_lines(stderr)[-10:])
    _not_a_traceback(stderr)
    lines = _stderr_lines(stderr)
    assert lines and ("interrupted" in lines[-1].lower() or "aborted" in lines[-1].lower()), lines[-5:]


def _closed_pipe() -> int:
    """The writing end of a pipe whose reader has gone already: every write to it fails with EPIPE."""
    read, write = os.pipe()
    os.close(read)
    return write


@pytest.mark.parametrize("name", ["fmnist-train", "fmnist-export", "fmnist-predict", "fmnist-bench", "fmnist-batch"])
def test_a_closed_pipe_ends_quietly_with_0(name: str, tmp_path: Path, data) -> None:
    """`fmnist-... | head` where the reader has gone: exit 0, no traceback, no error line (fmnist-export and
    fmnist-train said `Error: cannot write to artifacts: Broken pipe`, blaming their own output folder)."""
    stdout = _closed_pipe()
    try:
        done = subprocess.run(
            [console_script(name), *_arguments(name, tmp_path, data.root)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    _not_a_traceback(done.stderr)
    assert not [line for line in _stderr_lines(done.stderr) if "Error" in line or "rror:" in line], done.stderr
    if name == "fmnist-batch":  # the job ran whole and its rows were written before the summary could not be
        rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
        reference = load(ARTIFACTS / "fmnist_mlp.onnx").predict_files(sorted(SAMPLES.glob("*.png")))
        assert [r["class"] for r in rows] == reference.prediction.labels and all(r["error"] is None for r in rows)


def test_main_paths_of_predict_export_bench(tmp_path: Path, data) -> None:
    predict = subprocess.run(
        [console_script("fmnist-predict"), str(SAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert predict.returncode == 0 and predict.stderr == "", predict.stderr
    assert predict.stdout.startswith(f"{SAMPLE}: Ankle boot (0.")
    export = subprocess.run(
        [console_script("fmnist-export"), *_arguments("fmnist-export", tmp_path, data.root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert export.returncode == 0, export.stdout + export.stderr
    assert "ok   ort_optimised:golden_parity" in export.stdout and " FAIL " not in export.stdout
    bench = subprocess.run(
        [console_script("fmnist-bench"), *_arguments("fmnist-bench", tmp_path, data.root)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert bench.returncode == 0, bench.stderr[-3000:]
    assert "numpy" in bench.stdout and json.loads((tmp_path / "bench" / "latency.json").read_text())["cells"]


def test_fmnist_train_main_path_and_ctrl_c_after_an_epoch(tmp_path: Path, data) -> None:
    """Trains for real; Ctrl-C once the first epoch is reported: exit 130 and that epoch's checkpoint kept (resuming
    from it is test_training's)."""
    proc = subprocess.Popen(
        [console_script("fmnist-train"), "--limit", "200", "--epochs", "50", "--device", "cpu"]
        + ["--output", str(tmp_path / "run"), "--data-dir", str(data.root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([proc.stdout], [], [], 300)
    first = proc.stdout.readline() if ready else ""
    assert first.startswith("Epoch   1/50"), first + proc.stderr.read()[-2000:] if not ready else first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    _not_a_traceback(err)
    assert list((tmp_path / "run").glob("*checkpoint*")), sorted(p.name for p in (tmp_path / "run").iterdir())


def test_fmnist_serve_main_path_with_nothing_to_print_and_ctrl_c(tmp_path: Path, data) -> None:
    """The server writes nothing to standard output, so a closed pipe there changes nothing; it answers, and
    Ctrl-C stops it gracefully with 0."""
    stdout = _closed_pipe()
    try:
        proc = subprocess.Popen([console_script("fmnist-serve"), "--port", "0"], stdout=stdout, stderr=subprocess.PIPE)
    finally:
        os.close(stdout)
    try:
        ready, _, _ = select.select([proc.stderr], [], [], 120)
        line = proc.stderr.readline().decode() if ready else ""
        assert line.startswith("serving "), line
        url = line.split("http://")[1].split("/")[0]
        image = np.load(ARTIFACTS / "golden.npz", allow_pickle=False)["images"][:1]
        body = {
            "inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 28, 28], "data": image.ravel().tolist()}]
        }
        for _ in range(300):  # ready once the application has started: bounded by the attempts
            try:
                response = httpx.post(f"http://{url}/v2/models/fmnist_mlp/infer", json=body, timeout=30)
                break
            except httpx.ConnectError:
                time.sleep(0.1)
        assert response.status_code == 200, response.text
        logits = np.float32(response.json()["outputs"][0]["data"])
        assert np.array_equal(logits, load(ARTIFACTS / "fmnist_mlp.onnx").predict(image).logits[0])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        stderr = proc.stderr.read().decode()
        _not_a_traceback(stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
