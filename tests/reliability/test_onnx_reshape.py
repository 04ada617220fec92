"""An ONNX file whose Reshape shape constant is itself malformed: the graph check reads it, and refuses it in one line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tests.conftest import ARTIFACTS


def _onnx_with_reshape_shape(tmp_path: Path, name: str, edit) -> Path:
    import onnx

    model = onnx.load(str(ARTIFACTS / "fmnist_mlp.onnx"))
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape")
    shape = next(t for t in model.graph.initializer if t.name == reshape.input[1])
    edit(shape)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _odd_raw_length(t) -> None:
    t.raw_data = b"\x01\x02\x03"


def _undefined_type(t) -> None:
    t.data_type = 0


def _dims_past_its_data(t) -> None:
    del t.dims[:]
    t.dims.extend([1 << 40])


@pytest.mark.parametrize(
    "edit", [_odd_raw_length, _undefined_type, _dims_past_its_data], ids=["odd-raw-length", "undefined", "dims"]
)
def test_an_onnx_reshape_shape_that_is_not_a_tensor_is_one_line(tmp_path: Path, edit) -> None:
    """The Reshape's shape constant, read by the graph check, is itself malformed: refused in one line."""
    from click.testing import CliRunner

    from fmnist_deploy.runtime.cli import main as predict_cli

    evil = _onnx_with_reshape_shape(tmp_path, edit.__name__.strip("_"), edit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(
            predict_cli, [str(ARTIFACTS / "samples" / "0000_ankle_boot.png"), "--model", str(evil)]
        )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-2000:]
