"""Packaging: one `fmnist_deploy` namespace, a public API, nothing generic at the top of site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import fmnist_deploy
from tests.conftest import ARTIFACTS, REPO, console_script


def test_public_api_resolves_every_name() -> None:
    for name in fmnist_deploy.__all__:
        assert getattr(fmnist_deploy, name) is not None, name
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


def test_torch_side_names_load_lazily() -> None:
    code = (
        "import sys, fmnist_deploy\n"
        "assert 'torch' not in sys.modules\n"
        "fmnist_deploy.run_export\n"
        "assert 'torch' in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-P", "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr


def test_the_wheel_installs_one_namespace_and_nothing_else(tmp_path: Path) -> None:
    """Build from a copy of the tracked files (tests never write into the repository)."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "src"
    for name in files:  # every tracked file: a new package folder is in the wheel test without editing it
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
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
