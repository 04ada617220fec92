"""The registry of input kinds (runtime.input_kinds): one line per kind, and every reader derived from it.

fmnist-predict's walk, fmnist-batch's planner and both help texts read the table; a kind added
to it (here a made-up text format, in this module) is read by both commands with no other change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fmnist_deploy.runtime import input_kinds
from fmnist_deploy.runtime.cli import main as predict_cli
from fmnist_deploy.runtime.input_kinds import IMAGE, INPUT_KINDS, InputKind, by_name, input_kind
from fmnist_deploy.runtime.inputs import Item, iter_items, walk_kinds
from tests.conftest import ARTIFACTS

MODEL = ARTIFACTS / "fmnist_mlp.onnx"


def pixel_rows(path: str, *, invert: bool = False, image_column: str = "image") -> Iterator[Item]:
    """The made-up kind's reader: one image per line, 784 space-separated pixel values."""
    for i, line in enumerate(Path(path).read_text().splitlines()):
        image = np.array(line.split(), dtype=np.uint8).reshape(28, 28)
        yield Item(f"{path}[{i}]", 255 - image if invert else image, path=path, index=i)


PIXELS = InputKind("pixels", (".pixels",), "text files of pixel values", f"{__name__}:pixel_rows")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a.png", "image"),
        ("a.PNG", "image"),
        ("scan.TIFF", "image"),
        ("a.npy", "batch"),
        ("a.NPY", "batch"),  # the walks once skipped an upper-case batch suffix that an image one passed
        ("t10k-images-idx3-ubyte", "batch"),
        ("t10k-images-idx3-ubyte.gz", "batch"),
        ("x-idx3.png", "batch"),  # the marker wins over an image suffix, in both commands
        ("rows.parquet", "table"),
        ("rows.Feather", "table"),
        ("notes.txt", None),
        (".png", None),  # a hidden file's name, not a suffix (as Path.suffix)
        ("png", None),
    ],
)
def test_a_file_name_claims_one_kind(name: str, kind: str | None) -> None:
    found = input_kind(name)
    assert (found.name if found else None) == kind


def test_every_kind_is_one_line_with_a_reader_that_resolves() -> None:
    names = [kind.name for kind in INPUT_KINDS]
    assert len(set(names)) == len(names) and IMAGE.reader is None
    suffixes = [s for kind in INPUT_KINDS for s in kind.suffixes]
    assert len(set(suffixes)) == len(suffixes) and all(s == s.lower() and s.startswith(".") for s in suffixes)
    for kind in INPUT_KINDS:
        assert by_name(kind.name) is kind
        if kind.reader is not None:
            module, _, function = kind.reader.partition(":")
            assert callable(getattr(__import__(module, fromlist=[function]), function))
    with pytest.raises(TypeError, match="decoded by runtime.inputs"):
        IMAGE.items("a.png")


@pytest.mark.parametrize("command", ["fmnist-predict", "fmnist-batch"])
def test_the_help_texts_list_every_kind(command: str) -> None:
    if command == "fmnist-batch":
        pytest.importorskip("ray", reason="fmnist-batch needs the optional ray package: pip install '.[scale]'")
        from fmnist_deploy.scaleout.cli import main
    else:
        main = predict_cli
    result = CliRunner().invoke(main, ["--help"], terminal_width=400)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "{inputs}" not in text
    for kind in INPUT_KINDS:
        assert kind.description in text, (command, kind.name)


def _tree(root: Path) -> Path:
    root.mkdir()
    image = np.asarray(Image.open(ARTIFACTS / "samples" / "0001_pullover.png"))
    Image.fromarray(image).save(root / "b.PNG")
    with open(root / "c.NPY", "wb") as f:  # np.save would add ".npy" to the name
        np.save(f, np.stack([image, image]))
    (root / "d.pixels").write_text(" ".join(map(str, image.ravel())) + "\n")
    (root / "e.txt").write_text("not an input")
    (root / "sub").mkdir()
    Image.fromarray(image).save(root / "sub" / "a.png")
    return root


def test_the_two_walks_find_the_same_files_as_the_same_kinds(tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="fmnist-batch needs the optional ray package: pip install '.[scale]'")
    from fmnist_deploy.scaleout.ray_job import plan

    root = _tree(tmp_path / "in")
    predicted = list(walk_kinds([root]))
    assert [(Path(p).name, kind) for p, kind in predicted] == [
        ("b.PNG", "image"),
        ("c.NPY", "batch"),
        ("a.png", "image"),
    ]
    units = plan([root], size=100, remote=False)
    planned = [(p, "image") for u in units if u["kind"] == "files" for p in u["paths"]]
    planned += [(u["path"], u["kind"]) for u in units if u["kind"] != "files"]
    assert sorted(planned) == sorted(predicted)


def test_a_new_kind_is_one_line_read_by_both_commands(tmp_path: Path, monkeypatch) -> None:
    """A made-up format added by one registry line: walked, named and read by fmnist-predict, planned and read
    by fmnist-batch's actor (one unit, through the reader), to the same answers; without the line, skipped."""
    ray = pytest.importorskip("ray", reason="fmnist-batch needs the optional ray package: pip install '.[scale]'")
    from fmnist_deploy.scaleout.ray_job import Classifier, JobConfig, part_name, plan, read_answers

    root = _tree(tmp_path / "in")
    args = ["--model", str(MODEL), "--json", str(root)]
    before = CliRunner().invoke(predict_cli, args)
    assert before.exit_code == 0, before.output
    assert "d.pixels" not in before.output
    monkeypatch.setattr(input_kinds, "INPUT_KINDS", (PIXELS, *INPUT_KINDS))
    result = CliRunner().invoke(predict_cli, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    pixels = [r for r in records if r["path"].endswith("d.pixels")]
    assert [r["input"] for r in pixels] == [f"{root / 'd.pixels'}[0]"] and pixels[0]["class"] == "Pullover"
    assert [r["input"] for r in records if r not in pixels] == [
        r["input"] for r in map(json.loads, before.output.split("\n")[:-1])
    ]
    assert [it.index for it in iter_items([root / "d.pixels"])] == [0]

    units = plan([root], size=100, remote=False)
    unit = next(u for u in units if u["path"].endswith("d.pixels"))
    assert (unit["kind"], unit["input"]) == ("read", "pixels")
    folder = tmp_path / "parts"
    folder.mkdir()
    # the actor asks Ray for its node's name, which would start a Ray instance in this process
    monkeypatch.setattr(ray, "get_runtime_context", lambda: SimpleNamespace(get_node_id=lambda: "test-node"))
    actor = Classifier(
        MODEL.read_bytes(), (ARTIFACTS / "fmnist_mlp.onnx.json").read_bytes(), MODEL.name, str(folder),
        asdict(JobConfig(model=MODEL, output=folder)),
    )  # fmt: skip
    row = {"unit": 0, **unit}
    summary = actor({key: np.array([value], dtype=object) for key, value in row.items()})
    assert not ray.is_initialized()
    assert (summary["rows"][0], summary["failed"][0]) == (1, 0)
    (answer,) = read_answers(folder / part_name(0)).to_pylist()
    assert (answer["input"], answer["path"], answer["index"]) == (pixels[0]["input"], pixels[0]["path"], 0)
    assert (answer["class"], answer["top_k"][:1]) == (pixels[0]["class"], pixels[0]["top_k"])
