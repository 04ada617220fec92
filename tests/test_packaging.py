"""Packaging: one `fmnist_deploy` namespace, a public API, nothing generic at the top of site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import fmnist_deploy
from tests.conftest import ARTIFACTS, REPO, console_script


def test_public_api_resolves_every_name() -> None:
    # each name is the very object its defining module holds, under the same name (a function, class or table)
    import importlib

    defined_in = {
        **dict.fromkeys(("BACKENDS", "OptionError", "Predictor", "Prediction", "FilesPrediction"), "runtime"),
        **dict.fromkeys(("RuntimeFailure", "load"), "runtime"),
        "read_image": "runtime.images",
        **dict.fromkeys(("FmnistError", "UsageError", "InputError", "ModelError", "DeviceError"), "errors"),
        **dict.fromkeys(("IntegrityError", "OutputError"), "errors"),
        "IntegrityWarning": "integrity",
        **dict.fromkeys(("run_export", "verify_file"), "export.api"),
        **dict.fromkeys(("ExportError", "GateError", "GateReport"), "export.checks"),
    }
    for name in fmnist_deploy.__all__:
        value = getattr(fmnist_deploy, name)
        if name in defined_in:
            assert value is getattr(importlib.import_module(f"fmnist_deploy.{defined_in[name]}"), name), name
            assert callable(value) or isinstance(value, dict), name
    assert fmnist_deploy.contract is importlib.import_module("fmnist_deploy.contract")
    assert fmnist_deploy.__version__ == importlib.metadata.version("fmnist-deploy")
    assert fmnist_deploy.load is fmnist_deploy.runtime.load
    assert fmnist_deploy.contract.LOGIT_TOLERANCE == 1e-5


def test_a_users_own_runtime_and_training_cannot_shadow_the_toolkit(tmp_path: Path) -> None:
    """The working directory is first on sys.path for `python -c`: modules named like our stages sit there."""
    for name in ("runtime.py", "export.py", "benchmarks.py"):
        (tmp_path / name).write_text("raise SystemExit('shadowed: the toolkit imported a user module')\n")
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "__init__.py").write_text("raise SystemExit('shadowed: training')\n")
    shutil.copy(ARTIFACTS / "fmnist_mlp.onnx", tmp_path / "m.onnx")
    code = (
        "import sys, numpy as np\n"
        "from fmnist_deploy import load\n"
        "p = load('m.onnx')\n"
        "print(p.predict(np.zeros((2, 28, 28), np.uint8)).labels[0])\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'runtime' not in sys.modules and 'training' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in fmnist_deploy.contract.CLASS_NAMES


def _python(code: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter started in the checkout (-P: the checkout's folders are not on sys.path)."""
    return subprocess.run(
        [sys.executable, "-P", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def test_torch_side_names_load_lazily() -> None:
    code = (
        "import sys, fmnist_deploy\n"
        "assert 'torch' not in sys.modules\n"
        "fmnist_deploy.run_export\n"
        "assert 'torch' in sys.modules\n"
    )
    result = _python(code)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "module", ["", ".training", ".export", ".benchmarks", ".scaleout", ".serving", ".errors", ".atomic", ".kinds"]
)
def test_the_root_package_and_every_stage_import_lazily(module: str) -> None:
    """`import fmnist_deploy` and any stage package load neither numpy, onnxruntime, torch nor the runtime."""
    heavy = ("numpy", "torch", "onnxruntime", "fmnist_deploy.runtime")
    done = _python(
        f"import sys, fmnist_deploy{module}\nheavy = [m for m in {heavy!r} if m in sys.modules]\nassert not heavy, heavy\n"
    )
    assert done.returncode == 0, done.stderr


def test_the_error_root_resolves_without_the_runtime() -> None:
    code = (
        "import sys, fmnist_deploy\n"
        "fmnist_deploy.FmnistError, fmnist_deploy.IntegrityWarning, fmnist_deploy.kinds.KINDS\n"
        "assert 'fmnist_deploy.runtime' not in sys.modules and 'numpy' not in sys.modules\n"
        "fmnist_deploy.load\n"
        "assert 'fmnist_deploy.runtime' in sys.modules and 'torch' not in sys.modules\n"
    )
    done = _python(code)
    assert done.returncode == 0, done.stderr


def test_every_public_error_descends_from_one_root() -> None:
    from fmnist_deploy import errors

    kinds = (
        errors.UsageError,
        errors.InputError,
        errors.ModelError,
        errors.DeviceError,
        errors.IntegrityError,
        errors.OutputError,
    )
    assert all(issubclass(kind, fmnist_deploy.FmnistError) for kind in kinds)
    # a device that cannot be used is known before any work, like a usage error (the README's exit-code table)
    assert errors.UsageError.exit_code == 2 and errors.DeviceError.exit_code == 2
    assert {kind.exit_code for kind in kinds if kind not in (errors.UsageError, errors.DeviceError)} == {1}
    public = [getattr(fmnist_deploy, name) for name in fmnist_deploy.__all__]
    raised = [
        obj for obj in public if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning)
    ]
    assert raised and all(issubclass(cls, fmnist_deploy.FmnistError) for cls in raised), raised
    assert fmnist_deploy.RuntimeFailure is fmnist_deploy.FmnistError
    assert issubclass(fmnist_deploy.OptionError, errors.UsageError)
    assert issubclass(fmnist_deploy.IntegrityWarning, UserWarning)


def test_the_wheel_installs_one_namespace_and_nothing_else(tmp_path: Path) -> None:
    """Build from a copy of the tracked files (tests never write into the repository)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "src"
    for name in files:  # every tracked file: a new package folder is in the wheel test without editing it
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, source / name)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-v",  # setuptools' own warnings: `make setup` must not print a page of them
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "absent from the `packages` configuration" not in built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("fmnist_deploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"fmnist_deploy", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    for stage in ("training", "export", "runtime", "benchmarks", "scaleout", "serving"):
        assert f"fmnist_deploy/{stage}/__init__.py" in names
    assert "fmnist_deploy/contract.py" in names
    # the exported files ship as package data, so the tools find a model from any folder
    for model in (
        "fmnist_mlp.onnx",
        "fmnist_mlp.onnx.json",
        "fmnist_mlp.torchscript",
        "fmnist_mlp.pt2",
        "fmnist_mlp.pt",
        "golden.npz",
        "golden.json",
        "samples/0000_ankle_boot.png",
    ):
        assert f"fmnist_deploy/artifacts/{model}" in names, model
    assert not any(n.endswith(("checkpoint.pt", ".gate.json", "curves.png")) for n in names), "only what the tools read"
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "fmnist-predict = fmnist_deploy.launch:predict" in entry_points


def test_the_commands_keep_onnxruntime_telemetry_off(tmp_path: Path) -> None:
    """ONNX Runtime (1.29+, Linux) otherwise writes a device id and an event store under ~/.cache/Microsoft
    and uploads events; the commands set ORT_DISABLE_TELEMETRY=1 unless the user chose otherwise."""
    home = tmp_path / "home"
    home.mkdir()
    environment = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    environment["HOME"] = str(home)
    predict = console_script("fmnist-predict")
    for command in ([predict], [sys.executable, "-m", "fmnist_deploy.runtime.cli"]):
        done = subprocess.run(
            [*command, str(ARTIFACTS / "samples" / "0000_ankle_boot.png")],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert not (home / ".cache" / "Microsoft").exists(), command


def test_a_commands_errors_map_once_to_one_line_and_the_kinds_exit_status() -> None:
    import click
    from click.testing import CliRunner

    from fmnist_deploy import errors, launch

    @click.command(cls=launch.Command)
    @click.argument("kind")
    def command(kind: str) -> None:
        raise getattr(errors, kind)(f"{kind} happened\nsecond line")

    for kind, status in (("UsageError", 2), ("InputError", 1), ("ModelError", 1), ("OutputError", 1)):
        result = CliRunner().invoke(command, [kind])
        assert result.exit_code == status, (kind, result.output)
        assert result.output == f"Error: {kind} happened\n", kind  # one line, never a traceback


def test_every_shipped_data_folder_is_a_listed_package() -> None:
    """Recent setuptools (the one `make setup` builds with) prints a page of warnings for a folder of package
    data that is not in `packages` (`fmnist_deploy.artifacts.samples`); older ones stay silent, so the
    configuration is checked here rather than the build's output."""
    import tomllib

    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    folders = {name: Path(path) for name, path in config["package-dir"].items()}

    def folder(package: str) -> Path:  # package-dir maps a package and, below it, its sub-packages
        base = max((name for name in folders if package == name or package.startswith(name + ".")), key=len)
        return REPO / folders[base] / Path(*package[len(base) :].strip(".").split(".") if package != base else ())

    for package, patterns in config["package-data"].items():
        root = folder(package)
        for pattern in patterns:
            for path in root.glob(pattern):
                sub = path.parent.relative_to(root)
                dotted = ".".join([package, *sub.parts])
                assert dotted in config["packages"], f"{dotted} ships data but is not listed in packages"
                assert path.parent == root or dotted in config["package-data"], dotted
