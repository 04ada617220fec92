"""One record shape for answers (fmnist_deploy.runtime.records), written by suffix, shared by every surface."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fmnist_deploy.runtime import images, load, records
from fmnist_deploy.runtime.cli import main as predict_cli
from fmnist_deploy.runtime.inputs import iter_items
from tests.conftest import ARTIFACTS

SAMPLES = ARTIFACTS / "samples"


@pytest.fixture(scope="module")
def predictor():
    return load(ARTIFACTS / "fmnist_mlp.onnx")


def test_items_carry_their_file_and_index(tmp_path: Path) -> None:
    batch = tmp_path / "three.npy"
    np.save(batch, np.zeros((3, 28, 28), np.uint8))
    png = SAMPLES / "0000_ankle_boot.png"
    items = list(iter_items([png, batch, tmp_path / "missing.png"], workers=1))
    assert [(i.name, i.path, i.index) for i in items] == [
        (str(png), str(png), -1),
        (f"{batch}[0]", str(batch), 0),
        (f"{batch}[1]", str(batch), 1),
        (f"{batch}[2]", str(batch), 2),
        (str(tmp_path / "missing.png"), str(tmp_path / "missing.png"), -1),
    ]


def test_records_have_one_shape_answered_or_not(predictor, tmp_path: Path) -> None:
    items = list(iter_items([SAMPLES / "0002_trouser.png", tmp_path / "nope.png"], workers=1))
    good = np.stack([i.image for i in items if i.error is None])
    answered, failed = records.item_records(items, predictor.predict(good), 2)
    assert tuple(answered) == records.FIELDS == tuple(failed)
    assert answered["class"] == "Trouser" and answered["error"] is None and len(answered["top_k"]) == 2
    assert answered["probability"] == answered["top_k"][0]["probability"] == round(answered["probability"], 6)
    assert failed["class"] is None and failed["top_k"] == [] and "no such file" in failed["error"]


@pytest.mark.parametrize("suffix", records.OUTPUT_SUFFIXES)
def test_records_written_by_suffix_read_back(predictor, tmp_path: Path, suffix: str) -> None:
    items = list(iter_items([SAMPLES, tmp_path / "nope.png"], workers=1))
    good = np.stack([i.image for i in items if i.error is None])
    written = records.item_records(items, predictor.predict(good), 3)
    out = tmp_path / f"answers{suffix}"
    records.write_records(out, written)
    if suffix == ".jsonl":
        back = [json.loads(line) for line in out.read_text().splitlines()]
        assert back == written
    elif suffix == ".csv":
        rows = list(csv.DictReader(out.open()))
        assert list(rows[0]) == list(records.FIELDS) and len(rows) == len(written)
        assert rows[0]["top_k"].count(";") == 2 and rows[-1]["class"] == "" and rows[-1]["error"]
    else:
        pq = pytest.importorskip("pyarrow.parquet", reason="Parquet output needs pyarrow (fmnist-deploy[scale])")
        assert pq.read_table(out).to_pylist() == written
    assert [p.name for p in tmp_path.iterdir()] == [out.name] or out.is_file()  # no temporary left beside it


def test_a_failed_write_leaves_no_file(tmp_path: Path) -> None:
    out = tmp_path / "answers.jsonl"
    with pytest.raises(RuntimeError), records.record_writer(out) as write:
        write([records.failure("x", "x", -1, "bad")])
        raise RuntimeError("interrupted")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_decode_image_is_read_image_on_bytes() -> None:
    for path in sorted(SAMPLES.glob("*.png"))[:3]:
        data = path.read_bytes()
        np.testing.assert_array_equal(images.decode_image(data), images.read_image(path))
        np.testing.assert_array_equal(images.decode_image(data, invert=True), images.read_image(path, invert=True))
    with pytest.raises(images.InputError, match="not an image"):
        images.decode_image(b"hello")


def test_predict_files_gives_the_same_records_as_fmnist_predict(predictor, tmp_path: Path) -> None:
    inputs = [str(SAMPLES / "0000_ankle_boot.png"), str(tmp_path / "nope.png"), str(SAMPLES / "0001_pullover.png")]
    result = CliRunner().invoke(predict_cli, [*inputs, "--json", "--top-k", "2"])
    from_cli = [json.loads(line) for line in result.stdout.splitlines()]
    assert predictor.predict_files(inputs, workers=1).records(2) == from_cli
    assert [r["input"] for r in from_cli] == inputs
