"""Scale-out: fmnist-batch on a local Ray instance (2 CPUs, no dashboard) answers exactly as
fmnist-predict does, absorbs a killed actor, resumes a killed job, and fails fast on a bad model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fmnist_deploy.contract import ACCURACY_SLACK_IMAGES
from fmnist_deploy.training.checkpoint import load_weights
from fmnist_deploy.training.data import raw_dir
from tests.conftest import ARTIFACTS

ray = pytest.importorskip("ray", reason="fmnist-batch needs the optional ray package: pip install '.[scale]'")

from fmnist_deploy.scaleout.cli import main as batch_cli  # noqa: E402 - after the importorskip
from fmnist_deploy.scaleout.ray_job import JobConfig, partial_path, run_job, start_ray  # noqa: E402

MODEL = ARTIFACTS / "fmnist_mlp.onnx"


@pytest.fixture(scope="module")
def local_ray():
    start_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory, data) -> Path:
    """2 000 test-set PNGs and a few bad files in one folder."""
    folder = tmp_path_factory.mktemp("pngs")
    for i, image in enumerate(data.test_images[:2000].numpy()):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    (folder / "zz_notes.png").write_text("not an image")
    (folder / "zz_cut.png").write_bytes((ARTIFACTS / "samples" / "0001_pullover.png").read_bytes()[:60])
    return folder


def _read(output: Path) -> list[dict]:
    if output.suffix == ".jsonl":
        return [json.loads(line) for line in output.read_text().splitlines()]
    import pyarrow.parquet as pq

    return pq.read_table(output).to_pylist()


def _predict_json(folder: Path) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.runtime.cli", str(folder), "--json", "--top-k", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_rows_equal_fmnist_predict_row_for_row(local_ray, png_folder: Path, tmp_path: Path, suffix: str) -> None:
    output = tmp_path / f"answers{suffix}"
    result = CliRunner().invoke(batch_cli, [str(png_folder), "--output", str(output), "--actors", "2"])
    assert result.exit_code == 1, result.output  # the bad files are rows with errors, not a failed job
    assert "2 input(s) failed" in result.stderr
    rows, expected = _read(output), _predict_json(png_folder)
    assert [r["input"] for r in rows] == [e["input"] for e in expected] and len(rows) == 2002
    for row, want in zip(rows, expected, strict=True):
        if "error" in want:
            assert row["error"] == want["error"] and row["class"] is None
        else:
            assert (row["class"], row["probability"], row["top_k"]) == (
                want["class"],
                want["probability"],
                want["top_k"],
            )
            assert row["error"] is None
    assert not partial_path(output).exists() and not list(tmp_path.glob(".*.tmp"))


def test_accuracy_on_the_idx_file_equals_the_recorded_one(local_ray, data, tmp_path: Path) -> None:
    output = tmp_path / "test_set.parquet"
    counts = run_job(JobConfig(model=MODEL, output=output, actors=2), [raw_dir(data.root) / "t10k-images-idx3-ubyte"])
    assert counts == {"rows": 10_000, "failed": 0, "resumed": 0}
    rows = _read(output)
    assert [r["index"] for r in rows] == list(range(10_000))
    names = load_weights(ARTIFACTS / "fmnist_mlp.pt").class_names
    predicted = np.array([names.index(r["class"]) for r in rows])
    accuracy = float((predicted == data.test_labels.numpy()).mean())
    recorded = load_weights(ARTIFACTS / "fmnist_mlp.pt").test_accuracy
    assert abs(accuracy - recorded) * 10_000 <= ACCURACY_SLACK_IMAGES + 1e-9


def test_a_killed_actor_is_restarted_and_every_input_answered_once(local_ray, png_folder: Path, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    output = tmp_path / "answers.jsonl"
    outcome: dict = {}
    done = [0]

    def job() -> None:
        try:
            outcome["counts"] = run_job(
                JobConfig(model=MODEL, output=output, actors=2, batch_size=8),
                [png_folder],
                pid_folder=pids,
                progress=lambda rows: done.__setitem__(0, done[0] + rows),
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (len(list(pids.iterdir())) < 2 or done[0] < 200) and thread.is_alive():
        time.sleep(0.005)
    killed_at = done[0]
    victim = int(sorted(pids.iterdir())[0].read_text())
    try:
        os.kill(victim, signal.SIGKILL)  # mid-run: rows are still coming
    except ProcessLookupError:  # the pool had finished and stopped its actors: nothing was killed
        killed_at = 1 << 30
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    rows, expected = _read(output), _predict_json(png_folder)
    assert [r["input"] for r in rows] == [e["input"] for e in expected]
    assert [r["class"] for r in rows] == [e.get("class") for e in expected]
    if killed_at < len(expected):  # the kill landed before the last row: Ray must have started a new actor
        assert len(list(pids.iterdir())) >= 3, f"killed after {killed_at} rows; no replacement actor started"


def test_a_killed_job_resumes_from_its_partial_output(local_ray, png_folder: Path, tmp_path: Path) -> None:
    output = tmp_path / "answers.jsonl"
    full = tmp_path / "full.jsonl"
    run_job(JobConfig(model=MODEL, output=full), [png_folder])
    finished = full.read_text().splitlines()
    # what a job killed after 700 rows leaves: its partial file, the last line torn
    partial_path(output).write_text("\n".join(finished[:700]) + "\n" + finished[700][:40])
    refused = CliRunner().invoke(batch_cli, [str(png_folder), "--output", str(output)])
    assert refused.exit_code == 1 and "pass --resume" in refused.output
    counts = run_job(JobConfig(model=MODEL, output=output, resume=True), [png_folder])
    assert counts["resumed"] == 700 and counts["rows"] == 2002
    assert output.read_text().splitlines() == finished
    assert not partial_path(output).exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "nope.onnx"], "nope.onnx: no such model file"),
        (["--model", str(ARTIFACTS / "fmnist_mlp.pt2")], "the Ray path runs ONNX files"),
        (["--output", "answers.csv"], "expected a .parquet or .jsonl output file"),
    ],
)
def test_a_bad_job_fails_fast_before_any_work(args: list[str], needle: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr("fmnist_deploy.scaleout.ray_job.start_ray", lambda *a, **k: started.append(1))
    options = ["--output", str(tmp_path / "out.jsonl"), *args] if "--output" not in args else args
    result = CliRunner().invoke(batch_cli, [str(ARTIFACTS / "samples"), *options])
    assert result.exit_code == 1 and needle in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error:") and not started
    assert sorted(p.name for p in tmp_path.iterdir()) == []
