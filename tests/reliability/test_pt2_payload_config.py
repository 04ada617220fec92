"""A .pt2 whose payload config (data/weights/model_weights_config.json) is JSON of another shape than
torch.export writes: refused in one line by the archive check, even when trusted."""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from fmnist_deploy.runtime.cli import main as predict_cli
from tests.conftest import ARTIFACTS


@pytest.mark.parametrize(
    "config", [b'{"config": [1, 2]}', b'{"config": "x"}', b"[1]"], ids=["list", "string", "top-list"]
)
def test_a_pt2_payload_config_of_another_shape_is_one_line(tmp_path: Path, config: bytes) -> None:
    evil = tmp_path / "config.pt2"
    with zipfile.ZipFile(ARTIFACTS / "fmnist_mlp.pt2") as src, zipfile.ZipFile(evil, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, config if info.filename.endswith("model_weights_config.json") else src.read(info))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(
            predict_cli, [str(ARTIFACTS / "samples" / "0000_ankle_boot.png"), "--model", str(evil), "--trust-code"]
        )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-2000:]
    assert "model_weights_config.json" in lines[0], lines[0]
