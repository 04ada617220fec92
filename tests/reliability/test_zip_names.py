"""Zip records whose names Python's zipfile and torch's reader see differently.

Python's zipfile cuts a record's name at its first NUL byte and keeps the last of duplicate
names; torch's reader looks names up byte for byte. A .pt2 holding a hostile
`models/model.json` and a harmless one named `models/model.json\\x00` would have the graph check
read the harmless one while torch.export.load runs the hostile one. Such archives are refused.
"""

from __future__ import annotations

import json
import re
import warnings
import zipfile
from pathlib import Path

import pytest

from fmnist_deploy.runtime import ModelError, load
from fmnist_deploy.trust import Trust
from tests.conftest import ARTIFACTS
from tests.reliability.crafted import shell_marker_command


def _pt2_with_shadow_graph(tmp_path: Path, marker: Path, nul: bool) -> Path:
    """The packaged .pt2 with a hostile models/model.json, followed by the original graph under a name
    Python reads as models/model.json too (a NUL-suffixed name, or the very same name again)."""
    out = tmp_path / "shadow.pt2"
    suffix = "Q" if nul else ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(ARTIFACTS / "fmnist_mlp.pt2") as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename.endswith("models/model.json"):
                    evil = re.sub(
                        r'"expr_str": "[^"]*"',
                        lambda _: json.dumps({"expr_str": shell_marker_command(marker)})[1:-1],
                        data.decode(),
                    ).encode()
                    dst.writestr(info.filename, evil)
                    dst.writestr(info.filename + suffix, data)
                else:
                    dst.writestr(info, data)
    if nul:
        blob = out.read_bytes()
        name = next(n for n in zipfile.ZipFile(out).namelist() if n.endswith("model.jsonQ")).encode()
        assert blob.count(name) == 2  # local header and central directory
        out.write_bytes(blob.replace(name, name[:-1] + b"\x00"))
    return out


@pytest.mark.parametrize("nul", [True, False], ids=["nul-suffixed-name", "duplicate-name"])
def test_a_pt2_whose_graph_record_is_shadowed_is_refused_even_trusted(tmp_path: Path, nul: bool) -> None:
    marker = tmp_path / "marker"
    evil = _pt2_with_shadow_graph(tmp_path, marker, nul)
    with pytest.raises(ModelError, match="record names"):
        load(evil, trust=Trust(code=True))
    assert not marker.exists(), "the command in the shadowed graph ran"


def test_check_zip_refuses_names_that_python_and_torch_read_differently(tmp_path: Path) -> None:
    from fmnist_deploy.bounds import check_zip
    from fmnist_deploy.errors import IntegrityError

    evil = _pt2_with_shadow_graph(tmp_path, tmp_path / "marker", nul=True)
    with pytest.raises(IntegrityError, match="record names"):
        check_zip(evil.read_bytes(), evil)
    check_zip((ARTIFACTS / "fmnist_mlp.pt2").read_bytes(), "fmnist_mlp.pt2")


@pytest.mark.parametrize(
    "expr",
    ["*".join(["999999999"] * 20), "0*s40", "s\u0664\u0660"],
    ids=["constant-size", "zero-times-batch", "unicode-digits"],
)
def test_a_trusted_pt2_whose_sizes_contradict_its_hints_is_one_line(tmp_path: Path, expr: str) -> None:
    """Plain arithmetic the graph check lets through, which torch's deserializer rejects by assertion."""
    from click.testing import CliRunner

    from fmnist_deploy.runtime.cli import main as predict_cli
    from tests.reliability.crafted import evil_pt2

    evil = evil_pt2(tmp_path, expr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = CliRunner().invoke(
            predict_cli, [str(ARTIFACTS / "samples" / "0000_ankle_boot.png"), "--model", str(evil), "--trust-code"]
        )
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-2000:]
