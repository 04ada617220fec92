"""Export: round trips, self-description, byte-identical re-export, and a gate that fails for real."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from fmnist_deploy.contract import LOGIT_TOLERANCE, REQUIRED_KEYS, sidecar_path
from fmnist_deploy.export import golden as golden_mod
from fmnist_deploy.export import onnx_format
from fmnist_deploy.export.api import ALL_FORMATS, eager_outputs, prepare, run_export, try_load_test_set, verify_file
from fmnist_deploy.export.checks import ExportError, GateError
from fmnist_deploy.export.cli import main as export_cli
from fmnist_deploy.export.formats import FORMATS
from fmnist_deploy.export.gate import EagerReference, References, verify
from fmnist_deploy.export.metadata import build_metadata, completed, write_sidecar
from fmnist_deploy.export.wrapper import Deployable, from_weights
from fmnist_deploy.kinds import KIND
from fmnist_deploy.training.checkpoint import Weights, load_weights, save_weights
from fmnist_deploy.training.config import CLASS_NAMES, Recipe
from fmnist_deploy.training.model import FashionMLP
from tests.conftest import ARTIFACTS, REPO

EXPORTED = ("fmnist_mlp.onnx", "fmnist_mlp.torchscript", "fmnist_mlp.pt2")


def random_weights(path: Path, seed: int = 0) -> Path:
    """A seeded random-weight model saved as a real weights file."""
    torch.manual_seed(seed)
    recipe = Recipe()
    model = FashionMLP.from_recipe(recipe)
    weights = Weights(
        recipe,
        {k: v.clone() for k, v in model.state_dict().items()},
        CLASS_NAMES,
        2.3,
        0.1,
        [0.1] * 10,
        [[0] * 10] * 10,
        {},
        {"torch": "test"},
        "cpu",
        "fast",
    )
    save_weights(path, weights)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, data) -> Path:
    """Every format of a random-weight model, exported and gated once for the module."""
    out = tmp_path_factory.mktemp("export")
    weights = random_weights(out / "weights.pt")
    results = run_export(weights, ALL_FORMATS, out, int8=True, data_dir=data.root)
    assert [r.path.name for r in results] == [*EXPORTED, "fmnist_mlp.int8.onnx"]
    assert all(r.report.passed for r in results)
    return out


@pytest.fixture(scope="module")
def source(exported, data):
    return prepare(exported / "weights.pt", exported, data)


def test_every_format_round_trips_with_eager_outputs(exported, source) -> None:
    images = source.golden.images
    for name in EXPORTED:
        fmt = FORMATS[name.split(".")[-1]]
        for label, run in fmt.runners(exported / name).items():
            logits, probs = run(images)
            assert np.abs(logits - source.golden.logits).max() <= 1e-5, (name, label)
            assert np.allclose(probs.sum(1), 1.0, atol=1e-6)


def test_gate_completeness_every_format_has_a_round_trip_case() -> None:
    assert set(ALL_FORMATS) == {n.split(".")[-1] for n in EXPORTED}
    # aoti is compiled for this machine (tests/test_aoti.py); int8, ort and the Triton repository are made
    # from the ONNX file (below, and tests/test_serving.py for the repository)
    assert set(FORMATS) == {*ALL_FORMATS, "aoti", "int8", "ort", "triton"}


def test_files_describe_themselves(exported) -> None:
    for name in [*EXPORTED, "fmnist_mlp.int8.onnx"]:
        path = exported / name
        fmt = FORMATS["onnx" if name.endswith(".onnx") else name.split(".")[-1]]
        meta = fmt.read_metadata(path)
        side = json.loads(sidecar_path(path).read_text())
        assert set(REQUIRED_KEYS) <= set(meta)
        assert {k: v for k, v in side.items() if k not in ("file", "file_sha256")} == meta
        assert meta["class_names"] == list(CLASS_NAMES)
        assert meta["inputs"][0] == {**meta["inputs"][0], "name": "image", "dtype": "uint8", "shape": ["N", 28, 28]}
        assert [o["name"] for o in meta["outputs"]] == ["logits", "probabilities"]
        assert meta["normalisation"]["mean"] == 0.5 and meta["normalisation"]["inside_graph"] is True
        assert not any("time" in k or "date" in k for k in meta), "no timestamps in metadata"
    onnx_meta = FORMATS["onnx"].read_metadata(exported / "fmnist_mlp.onnx")
    assert onnx_meta["opset"] == onnx_format.DEFAULT_OPSET and set(onnx_meta["exporter"]) == {
        "torch",
        "onnx",
        "onnxscript",
    }
    assert FORMATS["onnx"].read_metadata(exported / "fmnist_mlp.int8.onnx")["precision"] == "int8"


def test_no_path_of_the_exporting_machine_inside_any_file(exported) -> None:
    for name in [*EXPORTED, "fmnist_mlp.int8.onnx"]:
        blob = (exported / name).read_bytes()
        for needle in (str(REPO).encode(), str(exported).encode(), b"site-packages", b"/tmp/"):
            assert needle not in blob, (name, needle)


def test_reexport_is_byte_identical(exported, tmp_path: Path, data) -> None:
    run_export(exported / "weights.pt", ALL_FORMATS, tmp_path, int8=True, data_dir=data.root)
    for name in [*EXPORTED, "fmnist_mlp.int8.onnx", "golden.npz"]:
        assert (tmp_path / name).read_bytes() == (exported / name).read_bytes(), name
        if name != "golden.npz":
            assert sidecar_path(tmp_path / name).read_bytes() == sidecar_path(exported / name).read_bytes()


def test_export_never_mutates_the_callers_model(tmp_path: Path) -> None:
    module = Deployable(FashionMLP(), 0.5, 0.5).train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for name, fmt in FORMATS.items():
        if KIND[name].source is None:  # the others are made from a file, never from the module
            fmt.export(module, tmp_path / f"m{KIND[name].suffix}", {"x": 1})
    assert module.training and module.net.dropout1.training
    assert isinstance(module.net.dropout1, torch.nn.Dropout) and isinstance(module.net.fc1, torch.nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_golden_file_is_plain_npz(exported) -> None:
    golden = golden_mod.load(exported / "golden.npz")
    assert golden.images.dtype == np.uint8 and golden.images.shape == (100, 28, 28)
    assert np.bincount(golden.labels).tolist() == [10] * 10
    with np.load(exported / "golden.npz", allow_pickle=False) as f:
        assert int(f["format_version"]) == golden_mod.GOLDEN_VERSION == 2
        assert float(f["logit_tolerance"]) == LOGIT_TOLERANCE and "float64" in str(f["reference"])


def test_golden_reference_is_float64_rounded_once(exported, source) -> None:
    """The stored logits are the float64 forward pass rounded to float32, not this CPU's float32 kernels."""
    golden = golden_mod.load(exported / "golden.npz")
    state = {k: v.double().numpy() for k, v in source.weights.model.items()}
    x = (golden.images.reshape(100, -1) / 255.0 - 0.5) / 0.5
    for layer in ("fc1", "fc2"):
        x = np.maximum(x @ state[f"{layer}.weight"].T + state[f"{layer}.bias"], 0)
    expected = (x @ state["fc3.weight"].T + state["fc3.bias"]).astype(np.float32)
    assert np.array_equal(golden.logits, expected)
    eager, _ = eager_outputs(source.module, golden.images)
    assert 0 < np.abs(eager - golden.logits).max() <= LOGIT_TOLERANCE  # float32 eager is near, but not the reference


@pytest.mark.parametrize("damage", ["truncated", "empty", "version", "directory"])
def test_a_damaged_golden_file_is_a_one_line_error(tmp_path: Path, exported, damage: str) -> None:
    path = tmp_path / "golden.npz"
    blob = (exported / "golden.npz").read_bytes()
    if damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "directory":
        path.mkdir()
    else:
        golden = golden_mod.load(exported / "golden.npz")
        golden_mod.save(path, dataclasses.replace(golden, format_version=1))
    with pytest.raises(golden_mod.GoldenError) as info:
        golden_mod.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --- the gate catches what it claims to -------------------------------------------------------


def _raw_onnx(module: torch.nn.Module, path: Path, meta: dict, *, dynamic: bool = True, opset: int = 18) -> Path:
    """An ONNX file written WITHOUT the project's exporter safeguards (no eval copy, any shape, any opset)."""
    program = torch.onnx.export(
        module,
        (torch.zeros(2, 28, 28, dtype=torch.uint8),),
        dynamo=True,
        input_names=["image"],
        output_names=["logits", "probabilities"],
        opset_version=opset,
        external_data=False,
        verbose=False,
        dynamic_shapes={"image": {0: torch.export.Dim("N", min=1)}} if dynamic else None,
    )
    onnx_format.save(program.model_proto, path, meta)
    write_sidecar(path, meta)
    return path


def _gate_failures(path: Path, source, **kwargs) -> set[str]:
    before = sorted(path.parent.iterdir())
    with pytest.raises(GateError) as info:
        verify(path, source.references, **kwargs)
    assert sorted(path.parent.iterdir()) == before, "the gate writes nothing unless asked"
    return {c.name for c in info.value.reports[0].failures}


def _meta(source, opset: int = 18) -> dict:
    return completed(
        build_metadata(source.weights, source.weights_sha256),
        "onnx",
        exporter=("torch", "onnx", "onnxscript"),
        folded=False,
        opset=opset,
        ir_version=onnx_format.ir_version_for(opset),
    )


def test_gate_passes_a_good_file_written_the_raw_way(tmp_path: Path, source) -> None:
    """The control case for the failures below: same path, eval mode, dynamic batch, opset 18 as claimed."""
    path = _raw_onnx(from_weights(source.weights), tmp_path / "good.onnx", _meta(source))
    model = onnx.load(path)
    model.ir_version = onnx_format.ir_version_for(18)  # the raw exporter writes the newest IR
    onnx_format.save(model, path, _meta(source))
    write_sidecar(path, _meta(source))
    report = verify(path, source.references)
    assert report.passed


def test_gate_catches_a_train_mode_export(tmp_path: Path, source) -> None:
    module = from_weights(source.weights).train()
    failures = _gate_failures(_raw_onnx(module, tmp_path / "train.onnx", _meta(source)), source)
    assert "no_training_nodes" in failures
    assert "graph_as_data" in failures  # a Dropout node is off the contract: checked as data, never run


class _NoNormalisation(Deployable):
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(image.to(torch.float32))
        return logits, torch.softmax(logits, dim=-1)


def test_gate_catches_missing_normalisation(tmp_path: Path, source) -> None:
    module = _NoNormalisation(from_weights(source.weights).net, 0.5, 0.5).eval()
    path = tmp_path / "nonorm.onnx"
    onnx_format.export(module, path, _meta(source, onnx_format.DEFAULT_OPSET), fold=False)
    write_sidecar(path, _meta(source, onnx_format.DEFAULT_OPSET))
    failures = _gate_failures(path, source)
    assert {"ort_optimised:golden_parity", "ort_optimised:test_set_parity"} <= failures


def test_gate_catches_a_fixed_batch_dimension(tmp_path: Path, source) -> None:
    path = _raw_onnx(from_weights(source.weights), tmp_path / "fixed.onnx", _meta(source), dynamic=False)
    failures = _gate_failures(path, source)
    # its Reshape to [2, -1] is off the contract's graph: named, and the graph is not run (graph_as_data)
    assert {"input_contract", "output_contract", "graph_as_data"} <= failures


def test_gate_catches_a_wrong_opset(tmp_path: Path, source) -> None:
    path = _raw_onnx(from_weights(source.weights), tmp_path / "opset18.onnx", _meta(source))
    assert "opset" in _gate_failures(path, source, expected_opset=17)


def test_unreachable_opset_is_a_clear_export_error(tmp_path: Path, source) -> None:
    with pytest.raises(ExportError, match="cannot convert the ONNX graph to opset 13"):
        onnx_format.export(source.module, tmp_path / "old.onnx", {}, opset=13)


@pytest.mark.parametrize("name", [*EXPORTED, "fmnist_mlp.int8.onnx"])
def test_gate_catches_a_truncated_file(tmp_path: Path, exported, source, name: str) -> None:
    path = tmp_path / name
    path.write_bytes((exported / name).read_bytes()[:50_000])
    shutil.copy(sidecar_path(exported / name), sidecar_path(path))
    assert "loads" in _gate_failures(path, source)


def test_gate_catches_an_edited_sidecar(tmp_path: Path, exported, source) -> None:
    path = tmp_path / "fmnist_mlp.onnx"
    shutil.copy(exported / path.name, path)
    side = json.loads(sidecar_path(exported / path.name).read_text())
    side["class_names"][0] = "Hat"
    sidecar_path(path).write_text(json.dumps(side))
    assert _gate_failures(path, source) == {"sidecar"}


def test_gate_catches_other_weights(tmp_path: Path, exported, source) -> None:
    other = from_weights(load_weights(random_weights(tmp_path / "other.pt", seed=1)))
    images = source.test_set.images
    reference = EagerReference(images, source.test_set.labels, eager_outputs(other, images)[0])
    with pytest.raises(GateError) as info:
        verify(
            exported / "fmnist_mlp.onnx", References(golden=source.golden, test_set=reference, weights_sha256="0" * 64)
        )
    failures = {c.name: c.detail for c in info.value.reports[0].failures}
    assert {"weights", "ort_optimised:test_set_parity"} <= set(failures)
    assert "exported from other weights" in failures["weights"] and "--weights" in failures["weights"]
    assert "other weights than the file's" in failures["ort_optimised:test_set_parity"]


# --- the CLI ------------------------------------------------------------------------------


def test_cli_missing_weights_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(export_cli, ["--weights", str(tmp_path / "none.pt"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert (
        result.output.strip().splitlines()[-1]
        == f"Error: Invalid value for --weights: {tmp_path / 'none.pt'}: no such file"
    )
    assert not (tmp_path / "out").exists(), "nothing is written before the inputs are checked"


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", b""])
def test_cli_not_a_checkpoint_is_one_line(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    result = CliRunner().invoke(export_cli, ["--weights", str(bad), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and result.stdout == ""
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("[")]  # progress lines
    assert len(lines) == 1 and "not a readable torch checkpoint (not a zip archive" in lines[0]


def test_cli_other_torch_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "state.pt"
    torch.save(FashionMLP().state_dict(), other)  # a bare state_dict: no recipe, no metadata
    result = CliRunner().invoke(export_cli, ["--weights", str(other), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and "expected a fmnist-deploy/weights file" in result.output


def test_cli_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(export_cli, ["--format", "tflite"])
    assert result.exit_code == 2 and "'tflite' is not one of" in result.output


def test_cli_verify_fails_for_a_broken_file_with_exit_1(tmp_path: Path, exported) -> None:
    path = tmp_path / "fmnist_mlp.onnx"
    path.write_bytes((exported / "fmnist_mlp.onnx").read_bytes()[:1000])
    result = CliRunner().invoke(export_cli, ["--verify", str(path), "--weights", str(exported / "weights.pt")])
    assert result.exit_code == 1
    assert "FAIL loads" in result.output and result.output.strip().splitlines()[-1].startswith("Error:")


def test_cli_verify_json_report(exported) -> None:
    result = CliRunner().invoke(
        export_cli,
        [
            "--verify",
            str(exported / "fmnist_mlp.pt2"),
            "--weights",
            str(exported / "weights.pt"),
            "--json",
            "--trust-code",  # the file this test exported: code formats are only loaded when trusted
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] is True and report["format"] == "pt2"
    assert {"pt2:golden_parity", "pt2:test_set_parity", "pt2:batch_sizes", "no_training_nodes"} <= {
        c["name"] for c in report["checks"]
    }


def test_trust_native_code_is_a_hidden_old_spelling_of_trust_code(exported) -> None:
    args = ["--verify", str(exported / "fmnist_mlp.pt2"), "--weights", str(exported / "weights.pt")]
    refused = CliRunner().invoke(export_cli, args)
    assert refused.exit_code == 1 and "not trusted" in refused.output  # the flag below is what trusts it
    result = CliRunner().invoke(export_cli, [*args, "--trust-native-code"])
    assert result.exit_code == 0, result.output
    assert "note: --trust-native-code is now --trust-code" in result.stderr
    shown = CliRunner().invoke(export_cli, ["--help"]).output
    assert "--trust-code" in shown and "--trust-native-code" not in shown


# --- the committed artifacts --------------------------------------------------------------


@pytest.mark.parametrize("name", [*EXPORTED, "fmnist_mlp.int8.onnx"])
def test_committed_files_pass_the_gate(name: str, data) -> None:
    report = verify_file(ARTIFACTS / name, weights_path=ARTIFACTS / "fmnist_mlp.pt", opset=None, data_dir=data.root)
    assert report.passed
    assert any(c.name.endswith("test_set_parity") for c in report.checks)


def test_make_export_reproduces_the_committed_files_byte_for_byte(tmp_path: Path, data) -> None:
    """A fresh process, another folder: the same bytes as committed."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "fmnist_deploy.export.cli",
            "--format",
            "all",
            "--quantize",
            "int8",
            "--weights",
            str(ARTIFACTS / "fmnist_mlp.pt"),
            "--output",
            str(tmp_path),
            "--data-dir",
            str(data.root),
        ],
        check=True,
        cwd=tmp_path,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    # golden.npz too: its reference is float64 rounded once, independent of the CPU's float32 kernels.
    for name in [
        *EXPORTED,
        "fmnist_mlp.int8.onnx",
        "golden.npz",
        "golden.json",
        *(f"samples/{p.name}" for p in (ARTIFACTS / "samples").iterdir()),
    ]:
        assert (tmp_path / name).read_bytes() == (ARTIFACTS / name).read_bytes(), name
        if not name.startswith(("golden", "samples")):
            assert sidecar_path(tmp_path / name).read_bytes() == sidecar_path(ARTIFACTS / name).read_bytes(), name


def test_without_the_data_set_the_golden_file_stands_in(exported, tmp_path: Path) -> None:
    shutil.copy(exported / "weights.pt", tmp_path / "weights.pt")
    with pytest.raises(ExportError, match="no test set to build"):
        prepare(tmp_path / "weights.pt", tmp_path, None)
    shutil.copy(exported / "golden.npz", tmp_path / "golden.npz")
    source = prepare(tmp_path / "weights.pt", tmp_path, None)
    assert source.test_set is None and source.golden.weights_sha256 == source.weights_sha256
    other = random_weights(tmp_path / "other.pt", seed=3)
    with pytest.raises(ExportError, match="belongs to other weights"):
        prepare(other, tmp_path, None)


def test_a_damaged_data_set_is_an_error_not_a_skipped_check(tmp_path: Path, data, monkeypatch) -> None:
    from fmnist_deploy.training.data import DataError, raw_dir

    monkeypatch.chdir(tmp_path)  # the default ./data of a project folder
    raw = raw_dir(Path("data"))
    raw.mkdir(parents=True, exist_ok=True)
    for f in raw_dir(data.root).iterdir():
        shutil.copy(f, raw / f.name)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\x00" * 100)
    with pytest.raises(DataError, match="truncated or altered"):
        try_load_test_set()


# --- a gate that cannot pass by accident ---------------------------------------------------


def _copy_model(exported: Path, dest: Path, name: str = "fmnist_mlp.onnx") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(exported / name, dest / name)
    shutil.copy(sidecar_path(exported / name), sidecar_path(dest / name))
    return dest / name


def test_verify_with_a_mistyped_weights_path_is_a_usage_error(exported, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        export_cli, ["--verify", str(exported / "fmnist_mlp.onnx"), "--weights", str(tmp_path / "typo.pt")]
    )
    assert result.exit_code == 2 and "PASS" not in result.output
    assert "typo.pt: no such file" in result.output


def test_verify_without_golden_vectors_fails_with_a_named_check(exported, tmp_path: Path, data) -> None:
    model = _copy_model(exported, tmp_path / "alone")
    args = ["--verify", str(model), "--weights", str(exported / "weights.pt"), "--data-dir", str(data.root)]
    result = CliRunner().invoke(export_cli, args)
    assert result.exit_code == 1
    assert "FAIL reference:golden" in result.output and "pass --golden PATH" in result.output
    result = CliRunner().invoke(export_cli, [*args, "--golden", str(exported / "golden.npz")])
    assert result.exit_code == 0, result.output
    assert "ok   reference:golden" in result.output and "ort_optimised:golden_parity" in result.output


def test_verify_with_no_reference_at_all_fails_the_values_check(exported, tmp_path: Path, monkeypatch) -> None:
    model = _copy_model(exported, tmp_path / "alone")
    monkeypatch.chdir(tmp_path)  # no artifacts/fmnist_mlp.pt here: no default weights either
    result = CliRunner().invoke(export_cli, ["--verify", str(model)])
    assert result.exit_code == 1
    assert "FAIL values: no reference" in result.output
    assert "not run: test-set parity and accuracy: no weights given; pass --weights PATH" in result.output


def test_verify_without_weights_lists_what_was_not_run(exported, tmp_path: Path, monkeypatch) -> None:
    model = _copy_model(exported, tmp_path / "with_golden")
    shutil.copy(exported / "golden.npz", model.parent / "golden.npz")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_cli, ["--verify", str(model), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and any("pass --weights PATH" in r for r in report["not_run"])
    assert not any(c["name"].endswith("test_set_parity") for c in report["checks"])


def test_verify_is_read_only_unless_a_report_is_asked_for(exported, tmp_path: Path, data) -> None:
    model = _copy_model(exported, tmp_path / "m")
    shutil.copy(exported / "golden.npz", model.parent / "golden.npz")
    before = {p.name: p.read_bytes() for p in model.parent.iterdir()}
    args = ["--verify", str(model), "--weights", str(exported / "weights.pt"), "--data-dir", str(data.root)]
    assert CliRunner().invoke(export_cli, args).exit_code == 0
    assert {p.name: p.read_bytes() for p in model.parent.iterdir()} == before
    report_file = tmp_path / "reports" / "gate.json"
    assert CliRunner().invoke(export_cli, [*args, "--report", str(report_file)]).exit_code == 0
    report = json.loads(report_file.read_text())
    assert report["passed"] and report["machine"]["cpu"] and report["machine"]["logical_cores"] >= 1
    assert {p.name: p.read_bytes() for p in model.parent.iterdir()} == before


def test_verify_against_other_weights_says_that_weights_are_the_cause(exported, tmp_path: Path, data) -> None:
    other = random_weights(tmp_path / "other.pt", seed=5)
    result = CliRunner().invoke(
        export_cli,
        ["--verify", str(exported / "fmnist_mlp.onnx"), "--weights", str(other), "--data-dir", str(data.root)],
    )
    assert result.exit_code == 1
    assert "FAIL weights" in result.output and "the file was exported from other weights" in result.output
    assert "other weights than the file's" in result.output


def test_the_same_weights_saved_twice_give_the_same_bytes(exported, tmp_path: Path) -> None:
    weights = load_weights(exported / "weights.pt")
    save_weights(tmp_path / "a" / "w.pt", weights)
    save_weights(tmp_path / "b" / "other_name.pt", weights)
    assert (tmp_path / "a" / "w.pt").read_bytes() == (tmp_path / "b" / "other_name.pt").read_bytes()
    assert b".w.pt." not in (tmp_path / "a" / "w.pt").read_bytes(), "no temporary file name inside the archive"


def test_every_format_reports_what_its_exporter_did(exported) -> None:
    """folded_into_first_layer comes from the exporter, so an unfolded ONNX export says so."""
    folded = {
        name: FORMATS[name.split(".")[-1]].read_metadata(exported / name)["normalisation"]["folded_into_first_layer"]
        for name in EXPORTED
    }
    assert folded == {"fmnist_mlp.onnx": True, "fmnist_mlp.torchscript": False, "fmnist_mlp.pt2": False}


def test_unfolded_onnx_export_records_it(tmp_path: Path, source) -> None:
    meta = onnx_format.export(
        source.module, tmp_path / "m.onnx", build_metadata(source.weights, source.weights_sha256), fold=False
    )
    assert meta["normalisation"]["folded_into_first_layer"] is False
    assert onnx_format.read_metadata(tmp_path / "m.onnx") == meta


def test_cli_export_json_is_one_document(exported, tmp_path: Path, data) -> None:
    result = CliRunner().invoke(
        export_cli,
        [
            "--format",
            "all",
            "--weights",
            str(exported / "weights.pt"),
            "--output",
            str(tmp_path),
            "--data-dir",
            str(data.root),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert [r["file"] for r in reports] == list(EXPORTED) and all(r["passed"] for r in reports)


# --- fmnist-export as a tool ---------------------------------------------------------------


def test_export_with_a_missing_weights_file_writes_nothing_where_it_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(export_cli, ["--format", "onnx", "--weights", "artifacts/fmnist_mlp.pt"])
    assert result.exit_code == 2 and "artifacts/fmnist_mlp.pt: no such file" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "torchscript", "--quantize", "int8"], "int8 quantises the ONNX file"),
        (["--opset", "30"], "30 is not in the range 17<=x<="),
        (["--opset", "13"], "13 is not in the range 17<=x<="),
        (["--golden", "README.md"], "--golden and --report go with --verify FILE"),
    ],
)
def test_export_usage_errors_exit_2(args: list[str], needle: str, exported: Path) -> None:
    result = CliRunner().invoke(export_cli, [*args, "--weights", str(exported / "weights.pt")])
    assert result.exit_code == 2 and needle in result.output, result.output


def test_export_says_what_it_wrote_and_what_to_run_next(exported, tmp_path: Path, data) -> None:
    result = CliRunner().invoke(
        export_cli,
        [
            "--format",
            "onnx",
            "--quantize",
            "int8",
            "--weights",
            str(exported / "weights.pt"),
            "--output",
            str(tmp_path),
            "--data-dir",
            str(data.root),
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("fmnist_mlp.onnx", "fmnist_mlp.onnx.json", "fmnist_mlp.onnx.gate.json", "fmnist_mlp.int8.onnx"):
        size = (tmp_path / name).stat().st_size
        assert f"  {tmp_path.resolve() / name}  ({size:,} bytes)" in result.stdout
    assert result.stdout.rstrip().endswith(
        f"next: fmnist-predict {tmp_path.resolve() / 'samples' / '0000_ankle_boot.png'} --model {tmp_path.resolve() / 'fmnist_mlp.onnx'}"
    )
    assert "] exporting onnx" in result.stderr and "] gating fmnist_mlp.int8.onnx" in result.stderr
    assert "pre-processing" not in result.output, "ONNX Runtime's quantisation advice is noise to users"


def test_ctrl_c_during_export_is_one_line(exported, tmp_path: Path, data) -> None:
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fmnist_deploy.export.cli",
            "--format",
            "onnx",
            "--weights",
            str(exported / "weights.pt"),
            "--output",
            str(tmp_path),
            "--data-dir",
            str(data.root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        lines.append(line)
        if "exporting onnx" in line or not line:
            break
    proc.send_signal(signal.SIGINT)  # the export of the ONNX file has begun
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, "".join(lines) + stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("interrupted: every file is written atomically")
    assert not list(tmp_path.glob(".*.tmp")) and not (tmp_path / "fmnist_mlp.onnx").exists()


def test_ctrl_c_inside_a_string_exec_keeps_the_chosen_exit_status(tmp_path: Path) -> None:
    """Where the export above is interrupted, torch is often still importing: dataclasses build each
    `__init__` with a string `exec`. CPython 3.11 remembers a plain KeyboardInterrupt that left such an
    exec and, for `python -m`, kills the process with SIGINT at exit, whatever status the command chose;
    the commands' own handler (`catch_ctrl_c`) raises a subclass that keeps it."""
    (tmp_path / "interrupted.py").write_text(
        "import os, signal, sys\n"
        "from fmnist_deploy.launch import catch_ctrl_c\n"
        "if sys.argv[1] == 'handled':\n"
        "    catch_ctrl_c()\n"
        "try:\n"
        "    exec('os.kill(os.getpid(), signal.SIGINT)\\nfor _ in range(10**6): pass')\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(130)\n"
    )

    def status(mode: str) -> int:
        command = [sys.executable, "-m", "interrupted", mode]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=60, check=False).returncode

    assert status("plain") == -signal.SIGINT  # the interpreter's behaviour this guards against
    assert status("handled") == 130


# --- the ONNX Runtime format: a kind added through the registry (fmnist_deploy.kinds) -------------------


@pytest.fixture(scope="module")
def ort_exported(tmp_path_factory, exported, data) -> Path:
    """`--format ort` of the random-weight model: the ONNX file it is made from, then the .ort file, both gated."""
    out = tmp_path_factory.mktemp("ort")
    results = run_export(exported / "weights.pt", ("ort",), out, data_dir=data.root)
    assert [r.path.name for r in results] == ["fmnist_mlp.onnx", "fmnist_mlp.ort"]
    assert all(r.report.passed for r in results), [r.report.summary() for r in results]
    return out


def test_ort_file_is_gated_and_read_by_the_onnxruntime_backend(ort_exported, source) -> None:
    from fmnist_deploy import runtime

    onnx_file, ort_file = ort_exported / "fmnist_mlp.onnx", ort_exported / "fmnist_mlp.ort"
    assert ort_file.read_bytes()[4:8] == b"ORTM"
    report = json.loads((ort_exported / "fmnist_mlp.ort.gate.json").read_text())
    assert report["format"] == "ort" and report["passed"]
    assert {"input_contract", "output_contract", "ort_format:test_set_parity"} <= {c["name"] for c in report["checks"]}
    from_ort, from_onnx = runtime.load(ort_file), runtime.load(onnx_file)
    assert from_ort.backend_name == "onnxruntime"
    images = source.test_set.images[:2000]
    np.testing.assert_array_equal(from_ort.predict(images).logits, from_onnx.predict(images).logits)
    assert from_ort.metadata == from_onnx.metadata  # the conversion keeps every metadata key


def test_ort_file_comes_with_its_operators_and_the_mobile_verdict(ort_exported) -> None:
    config = (ort_exported / "fmnist_mlp.required_operators.config").read_text()
    assert "ai.onnx;13;Cast,Gemm,Softmax" in config and "# - fmnist_mlp.ort" in config
    assert str(ort_exported) not in config and "/tmp" not in config  # nothing of the exporting machine
    verdict = json.loads((ort_exported / "fmnist_mlp.ort.mobile.json").read_text())
    for provider in ("NNAPI", "CoreML NeuralNetwork", "CoreML MLProgram"):
        assert set(verdict[provider]) == {"as_is", "with_fixed_input_shapes"}, provider
    assert verdict["CoreML MLProgram"] == {"as_is": False, "with_fixed_input_shapes": True}


def test_gate_catches_a_truncated_ort_file(tmp_path: Path, ort_exported, source) -> None:
    path = tmp_path / "fmnist_mlp.ort"
    path.write_bytes((ort_exported / path.name).read_bytes()[:50_000])
    shutil.copy(sidecar_path(ort_exported / path.name), sidecar_path(path))
    assert "loads" in _gate_failures(path, source)


def test_cli_format_choices_include_every_registered_kind() -> None:
    result = CliRunner().invoke(export_cli, ["--help"])
    for name in ("onnx", "int8", "torchscript", "pt2", "aoti", "ort", "all", "triton"):
        assert name in result.output, name
