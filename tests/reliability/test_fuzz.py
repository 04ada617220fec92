"""A bounded coverage-guided fuzzing run (atheris) over image and batch-file decoding."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FUZZER = Path(__file__).with_name("fuzz_images.py")
RUNS, SOAK_RUNS = 3000, 200_000


def _seeds(folder: Path) -> Path:
    """Valid PNGs (first byte 0: the fuzzer's .png slot) for the mutations to start from."""
    import io

    import numpy as np
    from PIL import Image, PngImagePlugin

    folder.mkdir()
    rng = np.random.default_rng(0)
    text = PngImagePlugin.PngInfo()
    text.add_text("k", "v")
    for i, (shape, save) in enumerate(
        [((28, 28), {}), ((20, 30, 3), {}), ((28, 28), {"pnginfo": text}), ((9, 5), {"transparency": 0})]
    ):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(buffer, format="PNG", **save)
        (folder / f"seed{i}").write_bytes(b"\x00" + buffer.getvalue())
    return folder


def _fuzz(runs: int, tmp_path: Path, capsys) -> None:
    pytest.importorskip("atheris", reason="atheris has no wheel for this platform (x86-64 Linux, Python < 3.13)")
    corpus = _seeds(tmp_path / "corpus")
    result = subprocess.run(
        [
            sys.executable,
            str(FUZZER),
            f"-runs={runs}",
            "-max_len=8192",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # the fuzzer's scratch folder lies under the test's
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
