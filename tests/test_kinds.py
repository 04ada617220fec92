"""The registry of file kinds and backends (fmnist_deploy.kinds): every other table is derived from it and agrees."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fmnist_deploy import kinds
from fmnist_deploy.kinds import KIND, KINDS, READER, READERS
from tests.conftest import ARTIFACTS, REPO


def test_the_registry_is_torch_and_numpy_free() -> None:
    code = "import sys, fmnist_deploy.kinds\nassert not {'numpy', 'torch', 'onnxruntime'} & set(sys.modules)\n"
    done = subprocess.run([sys.executable, "-P", "-c", code], cwd=REPO, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_runtime_backends_are_the_registry_readers() -> None:
    from fmnist_deploy import runtime

    assert list(runtime.BACKENDS) == [r.name for r in READERS]
    for reader in READERS:
        cls = runtime.BACKENDS[reader.name]
        assert cls.name == reader.name  # the class and its registry line name the same backend
        assert f"{cls.__module__}:{cls.__name__}" == reader.target
        assert set(reader.reads) <= set(KIND)
        assert set(reader.devices) <= set(kinds.DEVICES)


def test_export_formats_are_the_registry_exporters() -> None:
    from fmnist_deploy.export import api, cli, formats

    exported = [k.name for k in KINDS if k.exporter is not None]
    assert list(formats.FORMATS) == exported
    for name, module in formats.FORMATS.items():
        assert module.NAME == name and module.__name__ == KIND[name].exporter
        writes = "derive" if KIND[name].source is not None else "export"
        assert callable(getattr(module, writes)), (name, writes)
        for function in ("read_metadata", "structure_checks", "runners"):
            assert callable(getattr(module, function)), (name, function)
        if KIND[name].folder:  # no file name says it is one: written on its own, never through the export set
            continue
        assert formats.format_of(Path(KIND[name].file_name)) == name
    assert list(cli.FORMAT_CHOICES) == [*(n for n in exported if not KIND[n].folder), "all", "triton"]
    assert api.ALL_FORMATS == ("onnx", "torchscript", "pt2")  # portable, reproducible, made from the weights


def test_the_triton_repository_is_a_folder_kind_made_from_the_onnx_file() -> None:
    from fmnist_deploy.export import api, cli
    from fmnist_deploy.export.checks import ExportError

    triton = KIND["triton"]
    assert [k.name for k in KINDS if k.folder] == ["triton"]
    assert (triton.folder, triton.source, triton.readers, triton.packaged) == (True, "onnx", (), False)
    assert kinds.kind_named("fmnist_mlp") is None and triton.bytes_kind is KIND["onnx"]
    assert not hasattr(cli, "_export_triton")
    with pytest.raises(ExportError, match="triton is a folder"):  # refused before any work
        api.run_export(ARTIFACTS / "fmnist_mlp.pt", ("triton",), Path("unused"))


def test_packaged_defaults_and_package_data_follow_the_registry() -> None:
    from fmnist_deploy.models import DEFAULT_FILES

    assert DEFAULT_FILES == {r.name: KIND[r.reads[0]].file_name for r in READERS}
    pyproject = (REPO / "pyproject.toml").read_text()
    for kind in KINDS:
        if kind.exporter is None and kind.name != "pt":
            continue
        shipped = f'"{kind.file_name}"' in pyproject
        assert shipped == kind.packaged, kind.name  # package data in step with the registry
        if kind.packaged:
            assert (ARTIFACTS / kind.file_name).is_file(), kind.file_name


def test_benchmark_rows_follow_the_registry() -> None:
    from fmnist_deploy.benchmarks import formats, latency, parity

    runtime_rows = {name: t for name, t in latency.TARGETS.items() if name not in latency.PEERS}
    assert {t.file for t in runtime_rows.values()} == {k.file_name for k in KINDS if k.readers}
    assert all(t.backend in READER for t in runtime_rows.values())
    assert "onnxruntime-ort" in formats.ROWS and "openvino" not in formats.ROWS  # auto readers only
    assert "openvino" in latency.CPU_ONLY and "onnxruntime-ort" in latency.CPU_ONLY and "aoti" in latency.CPU_ONLY
    assert {f for f, _, _ in parity.ROWS} == {k.file_name for k in KINDS if k.readers and k.packaged}


def test_longest_suffix_names_the_kind() -> None:
    assert kinds.kind_named("m.aoti.pt2") is KIND["aoti"]
    assert kinds.kind_named("m.pt2") is KIND["pt2"]
    assert kinds.kind_named("m.int8.onnx") is KIND["int8"]
    assert kinds.kind_named("m.onnx") is KIND["onnx"]
    assert kinds.kind_named("m.txt") is None
    assert kinds.backend_for(Path("m.ort")) == "onnxruntime"
    with pytest.raises(kinds.ModelError, match="which the runtime does not load"):
        kinds.backend_for(Path("m.aoti.pt2"))  # native code: no backend reads it
    with pytest.raises(kinds.ModelError, match="cannot tell the backend"):
        kinds.backend_for(Path("m.txt"))


@pytest.mark.parametrize(
    "name", ["fmnist_mlp.onnx", "fmnist_mlp.int8.onnx", "fmnist_mlp.torchscript", "fmnist_mlp.pt2", "fmnist_mlp.pt"]
)
def test_sniffing_recognises_every_committed_file_whatever_its_name(name: str, tmp_path: Path) -> None:
    renamed = tmp_path / "model.bin"
    shutil.copy(ARTIFACTS / name, renamed)
    expected = kinds.kind_named(name)
    sniffed = kinds.sniff(renamed)
    assert sniffed is not None
    assert sniffed is expected or (expected.sniff is None and sniffed is KIND[expected.source]), (name, sniffed)


def test_sniffing_gives_none_for_other_bytes(tmp_path: Path) -> None:
    other = tmp_path / "notes.onnx"
    other.write_text("hello")
    assert kinds.sniff(other) is None
    assert kinds.sniff(tmp_path / "missing.onnx") is None


def test_wrong_kind_hint_names_the_backend_and_suffix(tmp_path: Path) -> None:
    onnx_named_pt2 = tmp_path / "m.pt2"
    shutil.copy(ARTIFACTS / "fmnist_mlp.onnx", onnx_named_pt2)
    assert kinds.wrong_kind_hint(onnx_named_pt2, "pt2") == (
        "; this is an ONNX file: use --backend onnxruntime or rename it to .onnx"
    )
    assert kinds.wrong_kind_hint(onnx_named_pt2, "onnxruntime") == ""


def test_every_exporter_module_named_by_the_registry_exists() -> None:
    for kind in KINDS:
        if kind.exporter is not None:
            assert importlib.util.find_spec(kind.exporter) is not None, kind.exporter
    for reader in READERS:
        assert importlib.util.find_spec(reader.target.split(":")[0]) is not None, reader.target
