"""An export replaces its set whole: stopped at any rename, a reader sees the old set or the new one,
never a mix (model file, sidecar, golden vectors, gate report), and a failed export replaces nothing.

A SIGKILL leaves the files as they are at that instant, so the state after a kill at each rename is
what the folder holds at that rename: the export runs once with every rename recorded (a copy of the
folder just before and just after it), and every recorded state is read as the tools read it. A real
SIGKILL at the commit point and in the middle of the renames checks the same in a killed process.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fmnist_deploy.export import api
from fmnist_deploy.export import golden as golden_mod
from fmnist_deploy.export.api import run_export, verify_file
from fmnist_deploy.exportset import JOURNAL_NAME, STAGING_PREFIX, read_current, recover, resolve
from fmnist_deploy.runtime import load
from tests.test_export import random_weights

SET = ("fmnist_mlp.onnx", "fmnist_mlp.onnx.json", "fmnist_mlp.onnx.gate.json", "golden.npz", "golden.json")


def _weights_of_set(folder: Path, gate: bool = False) -> str:
    """The weights every reader of `folder` sees; fails if the readers disagree or refuse the set.

    With `gate`, also `fmnist-export --verify`'s check of the model against the golden vectors beside it.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load(folder / "fmnist_mlp.onnx")
    weights = model.metadata["weights_sha256"]
    golden = golden_mod.load(resolve(folder / "golden.npz"))
    assert golden.weights_sha256 == weights, "golden vectors of other weights than the model"
    golden_json = json.loads(read_current(folder / "golden.json", 1 << 24))
    assert golden_json["weights_sha256"] == weights, "golden.json of other weights"
    if gate:
        report = verify_file(folder / "fmnist_mlp.onnx", weights_path=None)
        assert report.passed, report.summary()
    gate_report = json.loads(read_current(folder / "fmnist_mlp.onnx.gate.json", 1 << 24))
    assert gate_report["passed"] is True and gate_report["file"] == "fmnist_mlp.onnx"
    return weights


@pytest.fixture(scope="module")
def two_weights(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return random_weights(folder / "old.pt", seed=1), random_weights(folder / "new.pt", seed=2)


@pytest.fixture(scope="module")
def old_set(tmp_path_factory, two_weights, data) -> Path:
    """The set of the old weights, exported once; each test works on a copy."""
    out = tmp_path_factory.mktemp("old") / "out"
    _export(two_weights[0], out, data)
    return out


def _copy_of(old_set: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(old_set, out)
    return out


def _export(weights: Path, out: Path, data) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_export(weights, ("onnx",), out, data_dir=data.root)


def test_stopped_at_every_rename_the_set_is_old_or_new(tmp_path: Path, two_weights, old_set, data, monkeypatch) -> None:
    new = two_weights[1]
    out = _copy_of(old_set, tmp_path)
    old_sha = _weights_of_set(out, gate=True)
    states: list[tuple[str, Path]] = []
    real_replace = os.replace

    def recording_replace(src, dst, *args, **kwargs):
        if Path(dst).resolve().is_relative_to(out.resolve()):
            index = len(states)
            before = tmp_path / f"state{index:03d}a"
            shutil.copytree(out, before, symlinks=True)
            states.append((f"before renaming onto {Path(dst).name}", before))
            real_replace(src, dst, *args, **kwargs)
            after = tmp_path / f"state{index:03d}b"
            shutil.copytree(out, after, symlinks=True)
            states.append((f"after renaming onto {Path(dst).name}", after))
            return None
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", recording_replace)
    _export(new, out, data)
    monkeypatch.setattr(os, "replace", real_replace)
    new_sha = _weights_of_set(out, gate=True)
    assert old_sha != new_sha
    renamed_into_place = {where.split()[-1] for where, _ in states if where.startswith("after")}
    assert set(SET) <= renamed_into_place, f"every file of the set is renamed into place: {renamed_into_place}"
    seen = []
    for where, state in states:
        seen.append(_weights_of_set(state))
        assert seen[-1] in (old_sha, new_sha), where
        recover(state)  # what the next export does first
        assert not (state / JOURNAL_NAME).exists() and not list(state.glob(f"{STAGING_PREFIX}*"))
        assert _weights_of_set(state) == seen[-1], f"{where}: recovery changed the set a reader saw"
    # the switch is one point: old up to the journal's rename, new from it on
    first_new = seen.index(new_sha)
    assert states[first_new][0] == f"after renaming onto {JOURNAL_NAME}", states[first_new][0]
    assert set(seen[first_new:]) == {new_sha} and set(seen[:first_new]) == {old_sha}


_KILLED_EXPORT = """
import os, signal, sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from fmnist_deploy.export.api import run_export

target, nth = sys.argv[4], int(sys.argv[5])
real_replace, seen = os.replace, [0]

def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if Path(dst).name == target:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)

os.replace = replace
run_export(Path(sys.argv[1]), ("onnx",), Path(sys.argv[2]), data_dir=Path(sys.argv[3]))
"""


@pytest.mark.parametrize(
    ("target", "nth"),
    [
        ("fmnist_mlp.onnx", 2),
        pytest.param(JOURNAL_NAME, 1, marks=pytest.mark.soak),
        pytest.param("golden.npz", 2, marks=pytest.mark.soak),
    ],
)
def test_a_sigkilled_export_leaves_a_usable_set(tmp_path: Path, two_weights, old_set, data, target, nth) -> None:
    """A real SIGKILL just after the new model is in place (the issue's case); under --soak also at the
    commit point and just after the golden file."""
    new = two_weights[1]
    out = _copy_of(old_set, tmp_path)
    old_sha = _weights_of_set(out)
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_EXPORT, str(new), str(out), str(data.root), target, str(nth)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    seen = _weights_of_set(out)
    assert seen != old_sha, "killed after the commit point: the new set is what readers see"
    _export(new, out, data)  # the next export finishes or redoes the switch
    assert _weights_of_set(out, gate=True) == seen
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "nothing left behind"


def test_a_full_disk_or_a_failed_gate_replaces_nothing(tmp_path: Path, two_weights, old_set, data, monkeypatch) -> None:
    new = two_weights[1]
    out = _copy_of(old_set, tmp_path)
    before = {name: (out / name).read_bytes() for name in SET}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(api, "write_report", full)
    with pytest.raises(OSError, match="No space left"):
        _export(new, out, data)
    monkeypatch.undo()

    from fmnist_deploy.export.checks import GateError

    real_verify = api.verify

    def failing(path, refs, **kwargs):
        report = real_verify(path, refs, **kwargs)
        report.add("injected", False, "a failed check")
        return report

    monkeypatch.setattr(api, "verify", failing)
    with pytest.raises(GateError):
        _export(new, out, data)
    for name in SET:
        assert (out / name).read_bytes() == before[name], f"{name} replaced by a failed export"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "nothing left behind"
