"""Corruption matrix: every file the toolkit reads x every way it can be damaged or hostile x every
command that reads it. Each run must end in one error line with a non-zero exit, run no code from
the file, and leave every other file as it was."""

from __future__ import annotations

import io
import json
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fmnist_deploy.export.cli import main as export_cli
from fmnist_deploy.runtime.cli import main as predict_cli
from fmnist_deploy.training.cli import main as train_cli
from fmnist_deploy.training.data import SHA256, raw_dir
from tests.conftest import ARTIFACTS
from tests.reliability.conftest import (
    fingerprints,
    malicious_pickle,
    malicious_torch_file,
    replace_records,
)

SAMPLE = ARTIFACTS / "samples" / "0000_ankle_boot.png"
MODEL_FILES = ("fmnist_mlp.onnx", "fmnist_mlp.int8.onnx", "fmnist_mlp.torchscript", "fmnist_mlp.pt2")
OUTCOMES: list[tuple[str, str, str]] = []  # (file, corruption, command) of every run, for the summary


def _flip(blob: bytes, at: int) -> bytes:
    at = min(max(at, 0), len(blob) - 1)
    return blob[:at] + bytes([blob[at] ^ 0xFF]) + blob[at + 1 :]


def _header_offset(blob: bytes) -> int:
    """Byte 8 of the file's own header: for a zip archive, of its first record's content (a zip's local
    header repeats what its central directory says, so damage there changes nothing that is read)."""
    if blob[:4] == b"PK\x03\x04":
        name_length = int.from_bytes(blob[26:28], "little")
        extra_length = int.from_bytes(blob[28:30], "little")
        return 30 + name_length + extra_length + 8
    return 8


def _golden_with_pickle(marker: Path) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, format_version=np.array(2), images=np.array([malicious_pickle(marker)], dtype=object))
    return buffer.getvalue()


def _hostile(name: str, original: bytes, marker: Path) -> dict[str, bytes]:
    """The malicious variants that make sense for a file of this kind."""
    if name in ("fmnist_mlp.pt", "checkpoint.pt"):
        return {"pickle": malicious_torch_file(marker)}
    if name == "fmnist_mlp.pt2":
        config = json.dumps({"config": {"net.fc1.weight": {"path_name": "weight_0", "use_pickle": True}}}).encode()
        return {
            "pickle": replace_records(original, {"data/sample_inputs/model.pt": malicious_torch_file(marker)}),
            "use_pickle": replace_records(
                original,
                {"data/weights/model_weights_config.json": config, "data/weights/weight_0": malicious_pickle(marker)},
            ),
        }
    if name == "fmnist_mlp.torchscript":
        return {"pickle": replace_records(original, {"data.pkl": malicious_pickle(marker)})}
    if name == "golden.npz":
        return {"pickle": _golden_with_pickle(marker)}
    return {}


SEED = 26  # of the random cut; a failure names the cut it made (truncated_at_CUT_of_SIZE)


def corruptions(name: str, original: bytes, marker: Path) -> dict[str, bytes | None]:
    """Every damaged or hostile version of a file; None stands for a directory in its place."""
    # a fixed seed per file name (hash() of a str changes every run): the cut, named in the case, is reproducible
    rng = np.random.default_rng([SEED, zlib.crc32(name.encode())])
    cut = int(rng.integers(1, len(original)))
    return {
        f"truncated_at_{cut}_of_{len(original)}": original[:cut],
        "flipped_header": _flip(original, _header_offset(original)),
        "flipped_data": _flip(original, int(len(original) * 0.6)),
        "empty": b"",
        "directory": None,
        "other_format": SAMPLE.read_bytes(),
        **_hostile(name, original, marker),
    }


@dataclass(frozen=True)
class Case:
    """A file, the folder it is read from, and the commands that read it."""

    file: str
    commands: dict[str, Callable[[Path, Path], tuple]]  # name -> (cli, args) for a work folder and its data folder


def _predict(model: str) -> Callable[[Path, Path], tuple]:
    return lambda work, data: (predict_cli, [str(SAMPLE), "--model", str(work / model)])


def _verify(model: str) -> Callable[[Path, Path], tuple]:
    return lambda work, data: (
        export_cli,
        ["--verify", str(work / model), "--weights", str(work / "fmnist_mlp.pt"), "--data-dir", str(data)],
    )


def _export(work: Path, data: Path) -> tuple:
    return export_cli, [
        "--weights",
        str(work / "fmnist_mlp.pt"),
        "--output",
        str(work),
        "--format",
        "onnx",
        "--data-dir",
        str(data),
    ]


CASES = [
    *(Case(name, {"predict": _predict(name), "verify": _verify(name)}) for name in MODEL_FILES),
    Case("fmnist_mlp.onnx.json", {"predict": _predict("fmnist_mlp.onnx"), "verify": _verify("fmnist_mlp.onnx")}),
    Case("fmnist_mlp.pt2.json", {"predict": _predict("fmnist_mlp.pt2"), "verify": _verify("fmnist_mlp.pt2")}),
    Case("golden.npz", {"verify": _verify("fmnist_mlp.onnx")}),
    Case(
        "fmnist_mlp.pt",
        {
            "predict": _predict("fmnist_mlp.pt"),
            "export": _export,
            "verify": _verify("fmnist_mlp.onnx"),
        },
    ),
    Case(
        "checkpoint.pt",
        {
            "train --resume": lambda work, data: (
                train_cli,
                [
                    "--output",
                    str(work),
                    "--resume",
                    "--epochs",
                    "3",
                    "--limit",
                    "300",
                    "--data-dir",
                    str(data),
                    "--device",
                    "cpu",
                ],
            ),
        },
    ),
    Case(
        "t10k-images-idx3-ubyte",
        {
            "train": lambda work, data: (
                train_cli,
                [
                    "--output",
                    str(work / "run"),
                    "--epochs",
                    "1",
                    "--limit",
                    "300",
                    "--data-dir",
                    str(data),
                    "--device",
                    "cpu",
                ],
            ),
            "export": _export,
        },
    ),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory, data) -> Path:
    """A work folder as a user has it: exported files, golden vectors, weights, and a resumable short run."""
    work = tmp_path_factory.mktemp("template")
    for name in (*MODEL_FILES, "golden.npz", "fmnist_mlp.pt"):
        shutil.copy(ARTIFACTS / name, work / name)
        if (ARTIFACTS / f"{name}.json").is_file():
            shutil.copy(ARTIFACTS / f"{name}.json", work / f"{name}.json")
    result = CliRunner().invoke(
        train_cli,
        [
            "--output",
            str(work / "run"),
            "--epochs",
            "2",
            "--limit",
            "300",
            "--data-dir",
            str(data.root),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    for produced in (work / "run").iterdir():  # the short run's results sit beside the exported files
        if produced.name not in work_names(work):
            shutil.move(produced, work / produced.name)
    return work


def work_names(work: Path) -> set[str]:
    return {p.name for p in work.iterdir()}


def _data_folder(base: Path, data, corrupt: str | None, content: bytes | None) -> Path:
    """The four IDX files as links to the real ones, one of them replaced when asked."""
    folder = base / "idx"
    folder.mkdir()
    for name in SHA256:
        if name == corrupt:
            if content is None:
                (folder / name).mkdir()
            else:
                (folder / name).write_bytes(content)
        else:
            (folder / name).symlink_to(raw_dir(data.root) / name)
    return folder


@pytest.mark.parametrize("case", CASES, ids=[c.file for c in CASES])
def test_every_damaged_or_hostile_file_is_refused_by_every_reader(
    case: Case, template: Path, tmp_path: Path, data
) -> None:
    marker = tmp_path / "code-ran.marker"
    is_idx = case.file in SHA256
    original = (raw_dir(data.root) / case.file).read_bytes() if is_idx else (template / case.file).read_bytes()
    committed = fingerprints(ARTIFACTS)
    failures = []
    for corruption, content in corruptions(case.file, original, marker).items():
        for command, make in case.commands.items():
            work = tmp_path / f"{corruption}-{command.replace(' ', '_')}"
            shutil.copytree(template, work, symlinks=True)
            if is_idx:
                data_dir = _data_folder(work, data, case.file, content)
            else:
                data_dir = data.root
                target = work / case.file
                target.unlink()
                if content is None:
                    target.mkdir()
                else:
                    target.write_bytes(content)
            before = {k: v for k, v in fingerprints(work).items() if not k.endswith(case.file)}
            cli, args = make(work, data_dir)
            result = CliRunner().invoke(cli, args)
            after = {k: v for k, v in fingerprints(work).items() if not k.endswith(case.file)}
            lines = [line for line in result.output.strip().splitlines() if not line.startswith(("[", "note:"))]
            problems = []
            if result.exit_code == 0:
                problems.append("exit 0")
            if result.exception is not None and not isinstance(result.exception, SystemExit):
                problems.append(f"raised {type(result.exception).__name__}: {result.exception}")
            if "Traceback" in result.output or not lines or not lines[-1].lower().startswith(("error", "1 input")):
                problems.append(f"no one-line error: {lines[-3:]}")
            if marker.exists():
                problems.append("RAN CODE FROM THE FILE")
            if {k: v for k, v in after.items() if k in before} != before:
                changed = sorted(k for k in before if after.get(k) != before[k])
                problems.append(f"changed {changed}")
            if problems:
                failures.append(f"{corruption} x {command}: {'; '.join(problems)}")
            OUTCOMES.append((case.file, corruption, command))
    assert fingerprints(ARTIFACTS) == committed
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", ["fmnist_mlp.pt2", "fmnist_mlp.torchscript", "fmnist_mlp.pt", "golden.npz"])
def test_hostile_files_without_a_sidecar_run_no_code(name: str, tmp_path: Path, data) -> None:
    """Without a sidecar the sha256 check cannot stop them: the readers themselves must refuse."""
    marker = tmp_path / "code-ran.marker"
    for variant, content in _hostile(name, (ARTIFACTS / name).read_bytes(), marker).items():
        work = tmp_path / variant
        work.mkdir()
        shutil.copy(ARTIFACTS / "fmnist_mlp.onnx", work / "fmnist_mlp.onnx")
        shutil.copy(ARTIFACTS / "fmnist_mlp.onnx.json", work / "fmnist_mlp.onnx.json")
        (work / name).write_bytes(content)
        if name == "golden.npz":
            runs = [(export_cli, ["--verify", str(work / "fmnist_mlp.onnx")])]
        elif name == "fmnist_mlp.pt":
            runs = [
                (predict_cli, [str(SAMPLE), "--model", str(work / name)]),
                (
                    export_cli,
                    ["--weights", str(work / name), "--output", str(work / "out"), "--data-dir", str(data.root)],
                ),
            ]
        else:
            runs = [
                (predict_cli, [str(SAMPLE), "--model", str(work / name)]),
                (export_cli, ["--verify", str(work / name), "--golden", str(ARTIFACTS / "golden.npz")]),
            ]
        for cli, args in runs:
            result = CliRunner().invoke(cli, args)
            assert result.exit_code != 0, (variant, args, result.output)
            assert not marker.exists(), f"{name} ({variant}) ran code in {cli.name}"
            assert "Traceback" not in result.output
            OUTCOMES.append((name, f"{variant} without sidecar", cli.name))


def test_damaged_onnx_metadata_without_a_sidecar_is_one_line(tmp_path: Path) -> None:
    blob = bytearray((ARTIFACTS / "fmnist_mlp.onnx").read_bytes())
    at = blob.find(b'"T-shirt/top"')
    blob[at + 3] = 0xC3  # not UTF-8 any more
    (tmp_path / "m.onnx").write_bytes(bytes(blob))
    result = CliRunner().invoke(predict_cli, [str(SAMPLE), "--model", str(tmp_path / "m.onnx")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'm.onnx'}: metadata_props are not UTF-8 JSON values (UnicodeDecodeError)"
    ]
    OUTCOMES.append(("fmnist_mlp.onnx", "metadata not UTF-8, without sidecar", "predict"))


def test_matrix_summary(capsys) -> None:
    """Print the matrix's size (runs only when the matrix above ran in this session)."""
    if not OUTCOMES:
        pytest.skip("the corruption matrix did not run in this session")
    files = {f for f, _, _ in OUTCOMES}
    with capsys.disabled():
        print(
            f"\ncorruption matrix: {len(files)} files x their corruptions x their readers = {len(OUTCOMES)} runs, "
            "each refused in one line, no code run, no other file changed"
        )
    assert len(OUTCOMES) >= 100
