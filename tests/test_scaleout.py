"""Scale-out: fmnist-batch on a local Ray instance (2 CPUs, no dashboard) answers exactly as
fmnist-predict does, on image folders, IDX files and Parquet tables of image bytes, writes one
Parquet file per unit of work that reads back in input order, absorbs a killed actor, resumes a
killed job, and fails fast on a bad model. The multi-node test is tests/test_scaleout_cluster.py."""

from __future__ import annotations

import json
import os
import shutil
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
from fmnist_deploy.runtime.records import fields as records_fields
from fmnist_deploy.training.checkpoint import load_weights
from fmnist_deploy.training.data import raw_dir
from tests.conftest import ARTIFACTS

ray = pytest.importorskip("ray", reason="fmnist-batch needs the optional ray package: pip install '.[scale]'")

from fmnist_deploy.scaleout.cli import main as batch_cli  # noqa: E402 - after the importorskip
from fmnist_deploy.scaleout.ray_job import (  # noqa: E402 - after the importorskip
    MANIFEST,
    JobConfig,
    parts_folder,
    read_answers,
    run_job,
    start_ray,
)

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
    return read_answers(output).to_pylist()


@pytest.fixture(scope="module")
def predicted(png_folder: Path) -> list[dict]:
    """fmnist-predict --json --top-k 3 on the PNG folder, run once for the module."""
    return _predict_json(png_folder)


def _predict_json(folder: Path) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.runtime.cli", str(folder), "--json", "--top-k", "3"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return [json.loads(line) for line in result.stdout.splitlines()]


def _same_answers(rows: list[dict], expected: list[dict]) -> None:
    assert [r["input"] for r in rows] == [e["input"] for e in expected]
    for row, want in zip(rows, expected, strict=True):  # one record shape: every field agrees
        assert {key: row[key] for key in want} == want


@pytest.mark.parametrize("suffix", [".parquet", ""])  # .jsonl: the resume test
def test_rows_equal_fmnist_predict_row_for_row(
    local_ray, png_folder: Path, predicted: list[dict], tmp_path: Path, suffix: str
) -> None:
    output = tmp_path / f"answers{suffix}"
    args = [str(png_folder), "--output", str(output), "--actors", "2", "--batch-size", "300", "--top-k", "3"]
    result = CliRunner().invoke(batch_cli, args)
    assert result.exit_code == 1, result.output  # the bad files are rows with errors, not a failed job
    assert "2 input(s) failed" in result.stderr
    rows, expected = _read(output), predicted
    assert [r["input"] for r in rows] == [e["input"] for e in expected] and len(rows) == 2002
    for row, want in zip(rows, expected, strict=True):  # one record shape: every field agrees
        assert {key: row[key] for key in want} == want
    assert not list(tmp_path.glob(".*"))  # no partial folder, no temporary file left
    if not suffix:  # one Parquet file per unit of 300 images, in input order, and a manifest
        parts = sorted(p.name for p in output.iterdir())
        assert parts == [MANIFEST] + [f"part-{i:08d}.parquet" for i in range(7)]
        manifest = json.loads((output / MANIFEST).read_text())
        assert manifest["complete"] and manifest["rows"] == 2002 and manifest["failed"] == 2
        assert ray.data.read_parquet(str(output)).count() == 2002  # a later job reads the folder back


def test_a_csv_output_is_fmnist_predicts_csv_byte_for_byte(local_ray, tmp_path: Path) -> None:
    from fmnist_deploy.runtime.cli import main as predict_cli

    samples = ARTIFACTS / "samples"
    mine, theirs = tmp_path / "batch.csv", tmp_path / "predict.csv"
    result = CliRunner().invoke(batch_cli, [str(samples), "--output", str(mine), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(predict_cli, [str(samples), "--output", str(theirs), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    text = mine.read_text()
    assert text.splitlines()[0] == ",".join(records_fields())
    assert len(text.splitlines()) == 1 + len(list(samples.glob("*.png"))) and text == theirs.read_text()


def test_accuracy_on_the_idx_file_equals_the_recorded_one(local_ray, data, tmp_path: Path) -> None:
    output = tmp_path / "test_set.parquet"
    counts = run_job(JobConfig(model=MODEL, output=output, actors=2), [raw_dir(data.root) / "t10k-images-idx3-ubyte"])
    assert (counts["rows"], counts["failed"], counts["resumed"], counts["units"]) == (10_000, 0, 0, 10)
    rows = _read(output)
    assert [r["index"] for r in rows] == list(range(10_000))
    names = load_weights(ARTIFACTS / "fmnist_mlp.pt").class_names
    predicted = np.array([names.index(r["class"]) for r in rows])
    accuracy = float((predicted == data.test_labels.numpy()).mean())
    recorded = load_weights(ARTIFACTS / "fmnist_mlp.pt").test_accuracy
    assert abs(accuracy - recorded) * 10_000 <= ACCURACY_SLACK_IMAGES + 1e-9


def test_a_killed_actor_is_restarted_and_every_input_answered_once(
    local_ray, png_folder: Path, predicted: list[dict], tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    output = tmp_path / "answers.jsonl"
    outcome: dict = {}
    done = [0]

    def job() -> None:
        try:
            outcome["counts"] = run_job(
                JobConfig(model=MODEL, output=output, actors=2, batch_size=20),
                [png_folder],
                pid_folder=pids,
                progress=lambda rows: done.__setitem__(0, done[0] + rows),
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 120
    # both actors up and the first rows out (of 2 002): the kill lands early in the run
    while time.monotonic() < deadline and (len(list(pids.iterdir())) < 2 or done[0] < 8) and thread.is_alive():
        time.sleep(0.005)
    killed_at = done[0]
    victim = int(sorted(pids.iterdir())[0].read_text().split()[0])
    os.kill(victim, signal.SIGKILL)  # mid-run: rows are still coming (a finished pool would raise here)
    thread.join(timeout=300)
    assert "error" not in outcome, outcome.get("error")
    rows, expected = _read(output), predicted
    assert killed_at < len(expected) // 2, f"the kill landed after {killed_at} of {len(expected)} rows"
    assert [r["input"] for r in rows] == [e["input"] for e in expected]
    assert [r["class"] for r in rows] == [e.get("class") for e in expected]
    assert len(list(pids.iterdir())) >= 3, f"killed after {killed_at} rows; no replacement actor started"


def test_a_killed_job_resumes_from_its_part_files(local_ray, png_folder: Path, tmp_path: Path) -> None:
    full = tmp_path / "full.jsonl"
    run_job(JobConfig(model=MODEL, output=full, batch_size=300), [png_folder])
    # What a job killed mid-run leaves: the parts it finished, a temporary file it was writing, and its manifest.
    output = tmp_path / "answers.jsonl"
    folder = parts_folder(JobConfig(model=MODEL, output=output))
    run_job(JobConfig(model=MODEL, output=tmp_path / "parts", batch_size=300), [png_folder])
    shutil.copytree(tmp_path / "parts", folder)
    for name in ("part-00000002.parquet", "part-00000005.parquet"):
        (folder / name).unlink()
    (folder / ".part-00000002.parquet.abcd1234.tmp").write_bytes(b"PAR1 torn")
    refused = CliRunner().invoke(batch_cli, [str(png_folder), "--output", str(output), "--batch-size", "300"])
    assert refused.exit_code == 1 and "pass --resume" in refused.output
    other = CliRunner().invoke(batch_cli, [str(png_folder), "--output", str(output), "--resume"])
    assert other.exit_code == 1 and "was started with other batch_size" in other.output
    counts = run_job(JobConfig(model=MODEL, output=output, batch_size=300, resume=True), [png_folder])
    assert counts["resumed"] == 2002 - 600 and counts["rows"] == 2002 and counts["failed"] == 2
    assert output.read_text().splitlines() == full.read_text().splitlines()
    assert not folder.exists()


@pytest.mark.parametrize(
    ("args", "needle", "status"),
    [
        (["--model", "nope.onnx"], "nope.onnx: no such file", 2),
        (["--model", str(ARTIFACTS / "fmnist_mlp.pt2")], "the Ray path runs ONNX files", 1),
        (["--output", "answers.txt"], "expected a .jsonl, .csv, .parquet file, or a folder name", 2),
    ],
)
def test_a_bad_job_fails_fast_before_any_work(
    args: list[str], needle: str, status: int, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr("fmnist_deploy.scaleout.ray_job.start_ray", lambda *a, **k: started.append(1))
    options = ["--output", str(tmp_path / "out.jsonl"), *args] if "--output" not in args else args
    result = CliRunner().invoke(batch_cli, [str(ARTIFACTS / "samples"), *options])
    assert result.exit_code == status and needle in result.output  # 2: a usage error, 1: a model it cannot run
    assert result.output.strip().splitlines()[-1].startswith("Error:") and not started
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _image_table(png_folder: Path, hugging_face: bool):
    """The PNG folder's files as a table of image bytes (plain binary, or Hugging Face's {bytes, path} struct)
    with an id column, a null cell and a cell that is not an image."""
    import pyarrow as pa

    files = sorted(png_folder.glob("0*.png"))[:1000]
    cells = [f.read_bytes() for f in files] + [None, b"not an image"]
    ids = [f"id-{i}" for i in range(len(cells))]
    if hugging_face:
        paths = [f.name for f in files] + [None, "bad.png"]
        image = pa.StructArray.from_arrays([pa.array(cells, pa.binary()), pa.array(paths)], names=["bytes", "path"])
    else:
        image = pa.array(cells, pa.binary())
    return pa.table({"id": ids, "label": list(range(len(cells))), "picture": image}), files


@pytest.mark.parametrize("hugging_face", [False, True])
def test_a_parquet_table_of_image_bytes_gets_fmnist_predicts_answers_with_its_ids(
    local_ray, png_folder: Path, predicted: list[dict], tmp_path: Path, hugging_face: bool
) -> None:
    import pyarrow.parquet as pq

    table, files = _image_table(png_folder, hugging_face)
    dataset = tmp_path / "images"
    dataset.mkdir()
    pq.write_table(table.slice(0, 600), dataset / "a.parquet", row_group_size=250)  # 3 row groups: 3 units
    pq.write_table(table.slice(600), dataset / "b.parquet", row_group_size=250)
    output = tmp_path / "answers"
    args = [str(dataset), "--output", str(output), "--image-column", "picture", "--id-column", "id", "--top-k", "3"]
    result = CliRunner().invoke(batch_cli, args)
    assert result.exit_code == 1 and "2 input(s) failed" in result.stderr, result.output
    assert len(list(output.glob("part-*.parquet"))) == 3 + 2
    rows = read_answers(output).to_pylist()
    assert [r["id"] for r in rows] == table.column("id").to_pylist()
    assert [r["index"] for r in rows] == list(range(600)) + list(range(402))
    assert rows[0]["input"] == f"{dataset / 'a.parquet'}[0]" and rows[600]["path"] == str(dataset / "b.parquet")
    expected = predicted[:1000]
    for row, want in zip(rows[:1000], expected, strict=True):
        assert (row["class"], row["probability"], row["top_k"]) == (want["class"], want["probability"], want["top_k"])
    assert rows[1000]["error"].endswith("[400]: no image bytes (null)") and rows[1000]["class"] is None
    assert "not an image Pillow can read" in rows[1001]["error"]
    # fmnist-predict reads the same table, for a small run
    small = tmp_path / "b.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.runtime.cli", str(dataset / "b.parquet"), "--json", "--top-k", "3"]
        + ["--image-column", "picture", "--output", str(small)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    single = [json.loads(line) for line in small.read_text().splitlines()]
    assert [r["input"] for r in single] == [r["input"] for r in rows[600:]]
    assert [r.get("top_k") for r in single[:400]] == [r["top_k"] for r in rows[600:1000]]


def test_a_folder_tree_is_listed_by_tasks_in_fmnist_predicts_order(local_ray, png_folder: Path, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    files = sorted(png_folder.glob("0*.png"))[:600]
    for i, f in enumerate(files):  # root files between sub-folders, nested sub-folders, an empty one
        folder = tree if i % 5 == 0 else tree / f"d{i % 3}" / (f"e{i % 2}" if i % 4 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, folder / f"{i:04d}.png")
    (tree / "d9_empty").mkdir()
    output = tmp_path / "answers.parquet"
    counts = run_job(JobConfig(model=MODEL, output=output, batch_size=64), [tree])
    assert counts["rows"] == 600 and counts["failed"] == 0
    rows, expected = _read(output), _predict_json(tree)
    _same_answers(rows, expected)


def test_tables_without_image_bytes_are_error_rows_and_limits_hold(local_ray, tmp_path: Path, monkeypatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fmnist_deploy.runtime import tables
    from fmnist_deploy.runtime.errors import InputError
    from fmnist_deploy.scaleout import ray_job

    pq.write_table(pa.table({"pixels": [[1, 2]]}), tmp_path / "list.parquet")
    pq.write_table(pa.table({"photo": [b"x"]}), tmp_path / "named.parquet")
    (tmp_path / "torn.parquet").write_bytes(b"PAR1 not really")
    units = ray_job.plan(
        [tmp_path / "list.parquet", tmp_path / "named.parquet", tmp_path / "torn.parquet"], 8, "pixels", remote=False
    )
    errors = [u["error"] for u in units]
    assert "column 'pixels' is list<element: int64>; expected image bytes" in errors[0]
    assert "no column 'pixels' (columns: photo); choose one with --image-column" in errors[1]
    assert "torn.parquet: not a readable parquet file" in errors[2]
    # a row group's declared size over the limit is refused from the footer, before any data is read
    monkeypatch.setattr(tables, "MAX_GROUP_BYTES", 10)
    units = ray_job.plan([tmp_path / "named.parquet"], 8, "photo", remote=False)
    assert "row group 0 holds" in units[0]["error"] and "over the 10 byte limit" in units[0]["error"]
    monkeypatch.setattr(tables, "MAX_CELL_BYTES", 4)
    with pytest.raises(InputError, match=r"t\[0\]: 5 image bytes, over the 4 byte limit"):
        tables.decode_image(b"12345", "t[0]")


def test_an_arrow_ipc_table_is_read_a_record_batch_at_a_time(png_folder: Path, tmp_path: Path, monkeypatch) -> None:
    import pyarrow as pa

    from fmnist_deploy.runtime import tables
    from fmnist_deploy.runtime.errors import InputError

    table, _ = _image_table(png_folder, hugging_face=True)
    path = str(tmp_path / "images.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=400):
            writer.write_batch(batch)
    assert tables.table_groups(path, "picture") == [400, 400, 202]
    cells, ids = next(tables.read_group(path, 2, "picture", batch=150, id_column="id"))
    assert len(cells) == 150 and ids.to_pylist()[0] == "id-800"
    assert cells[0] == (png_folder / "00800.png").read_bytes()
    monkeypatch.setattr(tables, "MAX_GROUP_BYTES", 1000)
    with pytest.raises(InputError, match="record batch 0 holds .* over the 1000 byte limit"):
        tables.table_groups(path, "picture")


def test_a_unit_that_killed_its_actor_is_decoded_an_image_a_process_the_next_time(
    local_ray, png_folder: Path, predicted: list[dict], tmp_path: Path, monkeypatch
) -> None:
    from dataclasses import asdict

    from fmnist_deploy.runtime import images
    from fmnist_deploy.scaleout.ray_job import Classifier, part_name

    files = [str(p) for p in sorted(png_folder.glob("0*.png"))[:40]]
    real_read = images.read_image

    def crashing(path, *, invert=False):  # a decoder that dies (as a segfault would) on one file
        if str(path).endswith("00007.png"):
            os._exit(139)
        return real_read(path, invert=invert)

    monkeypatch.setattr(images, "read_image", crashing)  # the forked decoders inherit it
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / ".attempt-00000003").touch()  # what the attempt that died on unit 3 left
    config = asdict(JobConfig(model=MODEL, output=folder))
    actor = Classifier(
        MODEL.read_bytes(), (ARTIFACTS / "fmnist_mlp.onnx.json").read_bytes(), MODEL.name, str(folder), config
    )
    unit = {"unit": [3], "kind": ["files"], "paths": [files], "path": [""], "group": [-1], "start": [-1], "stop": [-1],
            "error": [""], "input": [""]}  # fmt: skip
    summary = actor({key: np.array(value, dtype=object) for key, value in unit.items()})
    assert (summary["rows"][0], summary["failed"][0]) == (40, 1)
    rows = read_answers(folder / part_name(3)).to_pylist()
    assert rows[7]["error"] == f"{files[7]}: the image decoder crashed on this input" and rows[7]["class"] is None
    expected = {e["input"]: e for e in predicted}
    assert all(r["top_k"] == expected[r["input"]]["top_k"] for i, r in enumerate(rows) if i != 7)
    assert not (folder / ".attempt-00000003").exists()


def test_more_actors_than_the_cluster_has_cpus_is_refused_instead_of_waiting(local_ray, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        batch_cli, [str(ARTIFACTS / "samples"), "--output", str(tmp_path / "a"), "--actors", "3"]
    )
    assert result.exit_code == 1 and "--actors 3 needs 3 CPUs (one per actor); the Ray cluster has 2" in result.output
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("form", ["ray://127.0.0.1:{port}", "127.0.0.1:{port}"])
def test_an_address_where_nothing_listens_fails_at_once_in_one_line(form: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = form.format(port=port)
    done = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.scaleout.cli", str(ARTIFACTS / "samples")]
        + ["--output", str(tmp_path / "out.jsonl"), "--address", address],
        capture_output=True,
        text=True,
        timeout=20,  # Ray's own connect would wait ~30 s before failing
        check=False,
    )
    assert done.returncode == 1, done.stderr  # a runtime failure, not a usage error
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith(f"Error: cannot reach Ray at {address}: ") and "Traceback" not in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_a_job_with_fewer_units_than_actors_starts_an_actor_per_unit(local_ray, tmp_path: Path) -> None:
    import tempfile

    pids = tmp_path / "pids"
    pids.mkdir()
    copies = set(Path(tempfile.gettempdir()).glob("fmnist-batch-model-*"))  # the actors' private model copies
    counts = run_job(
        JobConfig(model=MODEL, output=tmp_path / "a.jsonl", actors=2), [ARTIFACTS / "samples"], pid_folder=pids
    )
    assert (counts["rows"], counts["units"]) == (10, 1)
    assert len(list(pids.iterdir())) == 1  # the second actor would load the model for nothing
    assert set(Path(tempfile.gettempdir()).glob("fmnist-batch-model-*")) == copies  # removed once loaded


def test_a_local_instance_starts_without_rays_line_announcing_its_default_authentication(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("RAY_AUTH_MODE", "RAY_ADDRESS")}
    done = subprocess.run(
        [sys.executable, "-m", "fmnist_deploy.scaleout.cli", str(ARTIFACTS / "samples"), "--output", str(tmp_path / "a.jsonl")],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Token authentication" not in done.stderr
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 10
