"""Embedding from another language: Node.js runs the ONNX file with only its JSON sidecar."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.conftest import ARTIFACTS, REPO

EXAMPLE = REPO / "examples" / "node"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
@pytest.mark.skipif(
    not (EXAMPLE / "node_modules" / "onnxruntime-node").is_dir(), reason="run `make node-example` first"
)
def test_node_runs_the_onnx_file_with_its_sidecar_and_matches_the_golden_logits() -> None:
    result = subprocess.run(
        ["node", "predict.mjs", str(ARTIFACTS / "fmnist_mlp.onnx"), str(ARTIFACTS / "golden.npz")],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("100 golden images: max |dlogit| ") and line.endswith("first image: Ankle boot")
    assert float(line.split("max |dlogit| ")[1].split(",")[0]) <= 1e-5


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
@pytest.mark.skipif(
    not (EXAMPLE / "node_modules" / "onnxruntime-node").is_dir(), reason="run `make node-example` first"
)
def test_node_check_fails_for_the_wrong_model(tmp_path) -> None:
    """The int8 model differs from the fp32 golden logits by far more than 1e-5: the check must say so."""
    shutil.copy(ARTIFACTS / "fmnist_mlp.int8.onnx", tmp_path / "m.onnx")
    shutil.copy(ARTIFACTS / "fmnist_mlp.int8.onnx.json", tmp_path / "m.onnx.json")
    result = subprocess.run(
        ["node", "predict.mjs", str(tmp_path / "m.onnx"), str(ARTIFACTS / "golden.npz")],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
