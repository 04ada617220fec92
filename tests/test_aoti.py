"""AOTInductor packages: compiled for this machine, gated like every format, byte-stable, never loaded untrusted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fmnist_deploy.benchmarks.cli import main as bench_cli
from fmnist_deploy.contract import sidecar_path
from fmnist_deploy.export import aoti_format
from fmnist_deploy.export.api import ALL_FORMATS
from fmnist_deploy.export.cli import main as export_cli
from fmnist_deploy.export.formats import format_of
from fmnist_deploy.kinds import sniff
from fmnist_deploy.runtime.cli import main as predict_cli
from tests.conftest import ARTIFACTS, require_backend

WEIGHTS = ARTIFACTS / "fmnist_mlp.pt"


def _export(out: Path, data) -> CliRunner:
    result = CliRunner().invoke(
        export_cli,
        ["--format", "aoti", "--weights", str(WEIGHTS), "--output", str(out), "--data-dir", str(data.root)],
    )
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def package(tmp_path_factory, data) -> Path:
    out = tmp_path_factory.mktemp("aoti")
    result = _export(out, data)
    assert "fmnist_mlp.aoti.pt2 [aoti]: PASS" in result.output
    assert "No CUDA runtime" not in result.output  # torch's toolchain warning stays out of the output
    return out / "fmnist_mlp.aoti.pt2"


def test_the_package_is_gated_and_describes_itself(package: Path) -> None:
    report = json.loads(package.with_name(package.name + ".gate.json").read_text())
    names = {c["name"]: c["ok"] for c in report["checks"]}
    assert report["passed"] and names["aoti:test_set_parity"] and names["aoti:golden_parity"]
    assert names["cpu_instruction_sets"] and names["native_code_target"]
    meta = aoti_format.read_metadata(package)
    assert meta["format"] == "aoti" and meta["contract_version"] == "1.0"
    side = json.loads(sidecar_path(package).read_text())
    assert {k: v for k, v in side.items() if k not in ("file", "file_sha256")} == meta
    assert format_of(package) == "aoti" and sniff(package).name == "aoti"
    assert "aoti" not in ALL_FORMATS  # machine-specific: never part of --format all


def test_the_package_holds_no_sources_nor_random_id_and_re_exports_byte_identical(
    package: Path, tmp_path: Path, data
) -> None:
    import zipfile

    names = zipfile.ZipFile(package).namelist()
    assert not [n for n in names if n.endswith(".cpp")]
    _export(tmp_path, data)
    assert (tmp_path / package.name).read_bytes() == package.read_bytes()


def test_verify_loads_a_package_only_when_trusted(package: Path) -> None:
    untrusted = CliRunner().invoke(export_cli, ["--verify", str(package), "--weights", str(WEIGHTS)])
    assert untrusted.exit_code == 1
    assert "runs code when loaded and is not trusted" in untrusted.output and "--trust-code" in untrusted.output
    trusted = CliRunner().invoke(export_cli, ["--verify", str(package), "--weights", str(WEIGHTS), "--trust-code"])
    assert trusted.exit_code == 0, trusted.output


def test_the_runtime_refuses_a_package_in_one_line(package: Path) -> None:
    result = CliRunner().invoke(predict_cli, [str(ARTIFACTS / "samples"), "--model", str(package)])
    assert result.exit_code == 1
    assert "an AOTInductor package (compiled native code), which the runtime does not load" in result.output
    assert "Traceback" not in result.output


def test_latency_grid_with_the_peers(package: Path, tmp_path: Path, data) -> None:
    require_backend("openvino")
    args = ["latency", "--sizes", "1,8", "--seconds", "0.01", "--min-calls", "2", "--e2e-max-batch", "0"]
    args += ["--ceiling-rounds", "0", "--aoti-package", str(package), "--output", str(tmp_path), "--json"]
    for backend in ("onnxruntime", "openvino", "torch-compile", "aoti"):
        args += ["--backend", backend]
    result = CliRunner().invoke(bench_cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    cells = {(c["backend"], c["batch"]) for c in report["cells"]}
    assert cells == {(b, n) for b in ("onnxruntime", "openvino", "torch-compile", "aoti") for n in (1, 8)}
    fastest = report["summary"]["fastest_cpu_per_batch"]
    assert set(fastest) == {"1", "8"} and all(f["rival"] in ("torch-compile", "aoti") for f in fastest.values())
    outputs = {c["backend"]: c["provider"] for c in report["cells"]}
    assert outputs["openvino"] == "openvino:CPU f32"


def test_interleaved_ceiling_rounds(tmp_path: Path, data) -> None:
    from fmnist_deploy.benchmarks.latency import Config, measure

    require_backend("openvino")
    config = Config(backends=("onnxruntime", "openvino"), batches=(1000,), budget_s=0.01, min_repetitions=2)
    report = measure(replace_rounds(config, 2), data.test_images[:1000].numpy())
    interleaved = report["ceiling"]["interleaved"]
    assert interleaved["rounds"] == 2 and len(interleaved["sgemm_gflops_rounds"]) == 2
    assert set(interleaved["fractions"]) == {"onnxruntime@1000", "openvino@1000"}
    summary = report["summary"]["ceiling_fraction_interleaved"]
    assert summary["min"] <= summary["median"] <= summary["max"] and summary["median"] > 0
    assert np.isfinite(summary["median"])


def replace_rounds(config, rounds: int):
    import dataclasses

    return dataclasses.replace(config, ceiling_rounds=rounds)
