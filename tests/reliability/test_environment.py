"""A hostile environment: a read-only output folder, a full disk, an unreadable data folder. Each gives
one line and a non-zero exit, prints any verdict it reached, and leaves earlier artifacts intact.

As root (CI) the folders are real tmpfs mounts, read-only or tiny; elsewhere the same OSError
is injected where the toolkit creates its files.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from fmnist_deploy.benchmarks.cli import main as bench_cli
from fmnist_deploy.export.cli import main as export_cli
from fmnist_deploy.training.cli import main as train_cli
from tests.conftest import ARTIFACTS, console_script
from tests.reliability.conftest import fingerprints


def _can_mount() -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe = Path(tempfile.mkdtemp(prefix="fmnist-mount-probe-"))
    try:
        ok = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True, check=False
            ).returncode
            == 0
        )
        if ok:
            subprocess.run(["umount", str(probe)], check=True)
        return ok
    finally:
        probe.rmdir()


MOUNTS = _can_mount()


@contextmanager
def limited_folder(
    path: Path, monkeypatch, *, size_kb: int | None = None, readonly: bool = False, seed: dict[str, bytes] | None = None
) -> Iterator[Path]:
    """A folder holding `seed` files that is read-only or `size_kb` large: a tmpfs mount as root, an injected
    OSError (EROFS / ENOSPC) at file creation elsewhere."""
    path.mkdir(parents=True, exist_ok=True)
    if MOUNTS:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb or 1024}k", "tmpfs", str(path)], check=True)
        try:
            for name, blob in (seed or {}).items():
                (path / name).write_bytes(blob)
            if readonly:
                subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return
    for name, blob in (seed or {}).items():
        (path / name).write_bytes(blob)
    code = errno.EROFS if readonly else errno.ENOSPC
    real = tempfile.mkstemp

    def refusing(*args, **kwargs):
        folder = Path(kwargs.get("dir") or (args[2] if len(args) > 2 else "."))
        if folder.resolve().is_relative_to(path.resolve()):
            raise OSError(code, os.strerror(code), str(folder))
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refusing)
    yield path


def _one_error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if not line.startswith(("[", "note:"))]
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return lines[-1]


def test_read_only_output_folders(tmp_path: Path, data, monkeypatch) -> None:
    previous = {"fmnist_mlp.onnx": (ARTIFACTS / "fmnist_mlp.onnx").read_bytes(), "notes.txt": b"keep me"}
    with limited_folder(tmp_path / "ro", monkeypatch, readonly=True, seed=previous) as ro:
        before = fingerprints(ro)
        train = CliRunner().invoke(
            train_cli,
            [
                "--output",
                str(ro),
                "--epochs",
                "1",
                "--limit",
                "300",
                "--data-dir",
                str(data.root),
                "--device",
                "cpu",
                "--overwrite",
            ],
        )
        assert _one_error_line(train).startswith(f"Error: cannot write to {ro}")
        export = CliRunner().invoke(
            export_cli,
            [
                "--weights",
                str(ARTIFACTS / "fmnist_mlp.pt"),
                "--output",
                str(ro),
                "--format",
                "onnx",
                "--data-dir",
                str(data.root),
            ],
        )
        assert _one_error_line(export).startswith(f"Error: cannot write to {ro}")
        verify = CliRunner().invoke(
            export_cli,
            [
                "--verify",
                str(ARTIFACTS / "fmnist_mlp.onnx"),
                "--report",
                str(ro / "gate.json"),
                "--data-dir",
                str(data.root),
            ],
        )
        assert "fmnist_mlp.onnx [onnx]: PASS" in verify.stdout, "the verdict comes before the report is written"
        assert _one_error_line(verify).startswith(f"Error: cannot write to {ro}")
        parity = CliRunner().invoke(
            bench_cli, ["parity", "--device", "cpu", "--output", str(ro), "--data-dir", str(data.root)]
        )
        assert "**PASS**" in parity.stdout, "a finished measurement is printed, not thrown away"
        assert _one_error_line(parity).startswith(f"Error: cannot write the reports to {ro}")
        assert fingerprints(ro) == before


def test_a_full_disk(tmp_path: Path, data, monkeypatch) -> None:
    previous = {"fmnist_mlp.onnx": (ARTIFACTS / "fmnist_mlp.onnx").read_bytes()}
    with limited_folder(tmp_path / "small", monkeypatch, size_kb=700, seed=previous) as small:
        before = fingerprints(small)
        export = CliRunner().invoke(
            export_cli,
            [
                "--weights",
                str(ARTIFACTS / "fmnist_mlp.pt"),
                "--output",
                str(small),
                "--format",
                "all",
                "--data-dir",
                str(data.root),
            ],
        )
        line = _one_error_line(export)
        assert line.startswith("Error: cannot write to ") and "No space left on device" in line, line
        after = fingerprints(small)
        assert (
            after[str(small / "fmnist_mlp.onnx")] == before[str(small / "fmnist_mlp.onnx")]
            or str(small / "fmnist_mlp.onnx.json") in after
        ), "the old file stays unless a complete new one replaced it"
        assert not [p for p in small.rglob("*.tmp")], "no temporary file left behind"
        for path in small.rglob("*.npz"):  # whatever was completed must be complete
            import numpy as np

            with np.load(path, allow_pickle=False) as golden:
                assert golden["images"].shape == (100, 28, 28)
    with limited_folder(tmp_path / "tiny", monkeypatch, size_kb=300) as tiny:
        train = CliRunner().invoke(
            train_cli,
            ["--output", str(tiny), "--epochs", "2", "--limit", "300", "--data-dir", str(data.root), "--device", "cpu"],
        )
        line = _one_error_line(train)
        assert line.startswith(f"Error: cannot write to {tiny}") and "No space left on device" in line, line
        assert not list(tiny.iterdir()), "no partial checkpoint"


def test_an_unreadable_data_folder(tmp_path: Path, monkeypatch) -> None:
    from fmnist_deploy.training import data as data_mod

    def unreadable(folder: Path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(folder))

    monkeypatch.setattr(data_mod, "_find_in", unreadable)  # root reads any folder: the refusal is injected
    result = CliRunner().invoke(
        train_cli, ["--output", str(tmp_path / "out"), "--epochs", "1", "--data-dir", str(tmp_path), "--device", "cpu"]
    )
    line = _one_error_line(result)
    assert line.startswith("Error: ") and "Permission denied" in line and "make data" in line


# Standard output that cannot be written: the commands as a user starts them, both ways.
FULL_OUTPUT_COMMANDS = {
    "fmnist-predict": ["fmnist-predict", str(ARTIFACTS / "samples")],
    "python -m fmnist_deploy.runtime.cli": [
        sys.executable,
        "-m",
        "fmnist_deploy.runtime.cli",
        str(ARTIFACTS / "samples"),
    ],
    "fmnist-export --verify": ["fmnist-export", "--verify", str(ARTIFACTS / "fmnist_mlp.onnx")],
    "fmnist-bench --help": ["fmnist-bench", "--help"],
}


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("name", FULL_OUTPUT_COMMANDS)
def test_a_full_standard_output_is_one_line(name: str) -> None:
    """/dev/full fails every write with ENOSPC: the command says so in one line, blames no file of its own
    (fmnist-export used to report `cannot write to artifacts`), and exits 1."""
    program, *args = FULL_OUTPUT_COMMANDS[name]
    command = [program if program == sys.executable else console_script(program), *args]
    with open("/dev/full", "w") as full:
        done = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == "Error: cannot write to standard output: No space left on device"


def test_a_closed_standard_output_is_one_line() -> None:
    """Started with standard output closed (`>&-`): the answers have nowhere to go, and the command says so."""
    predict = console_script("fmnist-predict")
    done = subprocess.run(
        [predict, str(ARTIFACTS / "samples" / "0000_ankle_boot.png")],
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.close(1),  # noqa: PLW1509 - the child's own standard output, before exec
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == ["Error: cannot write to standard output: it is closed"]


def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`fmnist-predict FOLDER | head -1`: the reader goes away mid-stream; no traceback, no second error, and
    status 0: a reader that had what it wanted is not a failure (a `set -o pipefail` script goes on)."""
    predict = console_script("fmnist-predict")
    process = subprocess.Popen(
        [predict, *[str(ARTIFACTS / "samples")] * 500], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdout.readline().startswith(str(ARTIFACTS / "samples").encode())
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 0
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
