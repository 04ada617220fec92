"""A bounded coverage-guided fuzzing run (atheris) over image and batch-file decoding."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZER = Path(__file__).with_name("fuzz_images.py")
RUNS, SOAK_RUNS = 3000, 200_000


def _fuzz(runs: int, tmp_path: Path, capsys) -> None:
    pytest.importorskip("atheris", reason="atheris has no wheel for this platform (x86-64 Linux, Python < 3.13)")
    result = subprocess.run(
        [sys.executable, str(FUZZER), f"-runs={runs}", "-max_len=8192", "-seed=1", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    done = re.search(r"Done (\d+) runs", result.stderr)
    assert done and int(done.group(1)) >= runs, result.stderr[-2000:]
    with capsys.disabled():
        print(f"\natheris: {done.group(1)} inputs through read_image / read_batch, no crash")


def test_bounded_fuzzing_run(tmp_path: Path, capsys) -> None:
    _fuzz(RUNS, tmp_path, capsys)


@pytest.mark.soak
def test_fuzzing_soak(tmp_path: Path, capsys) -> None:
    _fuzz(SOAK_RUNS, tmp_path, capsys)
