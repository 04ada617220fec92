"""The CUDA paths' logic that a CPU can check: graph caches, chunking, provider options, the build that ran.

What needs a GPU (captures, streams, the numbers) is marked `cuda` in test_runtime.py,
test_training.py and test_benchmarks.py; here are only the parts that run the same way
without one, exercised for real (a real model on the CPU behind the streaming logic).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fmnist_deploy.benchmarks import bundle
from fmnist_deploy.machine import environment, onnxruntime_build
from fmnist_deploy.runtime.errors import OptionError
from fmnist_deploy.runtime.onnxruntime_backend import (
    CUDA_INSTALL_HINT,
    GraphIds,
    OnnxRuntimeBackend,
    cuda_provider_options,
)
from fmnist_deploy.runtime.torch_cuda import CudaOptions, GraphCache, chunk_plan, stream_chunks
from tests.conftest import ARTIFACTS, REPO


def test_graph_cache_keeps_the_most_recently_used_sizes() -> None:
    cache: GraphCache[str] = GraphCache(2)
    assert cache.put(1, "g1") == [] and cache.put(8, "g8") == []
    assert cache.get(1) == "g1"  # 1 is now the most recent
    assert cache.put(32, "g32") == ["g8"]  # so 8 goes
    assert cache.keys() == [1, 32] and 8 not in cache and cache.get(8) is None
    assert cache.put(1, "g1b") == [] and cache.keys() == [32, 1] and len(cache) == 2


def test_a_graph_cache_of_zero_keeps_nothing() -> None:
    cache: GraphCache[str] = GraphCache(0)
    assert cache.put(1, "g1") == ["g1"] and len(cache) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, True, "8"])
def test_graph_cache_size_must_be_a_whole_number(bad) -> None:
    with pytest.raises(OptionError, match="graph_cache"):
        GraphCache(bad)


@pytest.mark.parametrize(("n", "rows"), [(1, 65536), (10, 3), (12, 3), (100_000, 65536), (7, 7)])
def test_chunk_plan_covers_the_batch_in_order(n: int, rows: int) -> None:
    plan = chunk_plan(n, rows)
    assert plan[0][0] == 0 and plan[-1][1] == n
    assert all(a == prev_b for (_, prev_b), (a, _) in zip(plan, plan[1:], strict=False))
    assert all(0 < b - a <= rows for a, b in plan)


def test_cuda_options_are_checked() -> None:
    assert CudaOptions().cuda_graphs is None  # on where capture works
    with pytest.raises(OptionError, match="chunk_rows 0"):
        CudaOptions(chunk_rows=0)
    with pytest.raises(OptionError, match="max_graph_batch"):
        CudaOptions(max_graph_batch=True)


class DelayedLane:
    """A lane whose work lands only when waited for, with one reused answer buffer: as a CUDA stream's would.

    Collecting before waiting, or a second chunk submitted before the first is collected, gives wrong rows.
    """

    def __init__(self, images: np.ndarray, model, rows: int, log: list[str], name: str) -> None:
        self.images, self.model, self.log, self.name = images, model, log, name
        self.buffer = np.full((2, rows, 10), np.nan, dtype=np.float32)
        self.queued: tuple[int, int] | None = None

    def wait(self) -> None:
        if self.queued is not None:
            start, stop = self.queued
            logits, probs = self.model(self.images[start:stop])
            self.buffer[:, : stop - start] = (logits, probs)
            self.queued = None

    def submit(self, start: int, stop: int) -> None:
        assert self.queued is None, "a lane's buffer reused before its last chunk was waited for"
        self.buffer[:] = np.nan  # what a reused buffer holds, as far as correctness goes
        self.queued = (start, stop)
        self.log.append(f"{self.name}:{start}")

    def collect(self, out: np.ndarray, start: int, stop: int) -> None:
        assert self.queued is None, "collected before the lane finished"
        out[:, start:stop] = self.buffer[:, : stop - start]


def test_streamed_chunks_reassemble_the_model_answers_in_order() -> None:
    from fmnist_deploy import runtime

    predictor = runtime.load(ARTIFACTS / "fmnist_mlp.onnx")
    images = np.random.default_rng(0).integers(0, 256, (2_503, 28, 28), dtype=np.uint8)

    def model(x: np.ndarray):
        p = predictor.predict(x)
        return p.logits, p.probabilities

    expected = model(images)
    log: list[str] = []
    lanes = [DelayedLane(images, model, 600, log, name) for name in ("a", "b")]
    out = np.full((2, len(images), 10), np.nan, dtype=np.float32)
    stream_chunks(chunk_plan(len(images), 600), lanes, out)
    assert log == ["a:0", "b:600", "a:1200", "b:1800", "a:2400"]  # round-robin over the two lanes
    assert np.array_equal(out[0], expected[0]) and np.array_equal(out[1], expected[1])


def test_cuda_provider_options_keep_tf32_off_unless_asked() -> None:
    assert cuda_provider_options() == {"device_id": "0", "use_tf32": "0", "enable_cuda_graph": "1"}
    assert cuda_provider_options(tf32=True)["use_tf32"] == "1"
    assert "enable_cuda_graph" not in cuda_provider_options(cuda_graph=False)


def test_ort_graph_ids_are_bounded_and_stable() -> None:
    ids = GraphIds(2)
    assert ids.id_for(1) == (1, True) and ids.id_for(64) == (2, True)
    assert ids.id_for(1) == (1, False)  # the same size replays its own graph
    assert ids.id_for(100) == (GraphIds.UNCAPTURED, False) == (-1, False)  # past the bound: uncaptured, never 0
    with pytest.raises(OptionError, match="graph_cache"):
        GraphIds(-1)


def test_an_io_binding_runs_the_session_on_its_bound_buffers() -> None:
    # The CUDA path's binding (input and outputs allocated once, run options with a graph id), on the CPU
    # provider with CPU buffers: the same calls, answers equal to a plain session.run.
    import onnxruntime as ort

    from fmnist_deploy.runtime.onnxruntime_backend import _Bound

    session = ort.InferenceSession(str(ARTIFACTS / "fmnist_mlp.onnx"), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    bound = _Bound(session, ort, 5, GraphIds.UNCAPTURED, device="cpu")
    for batch in (images, images[::-1].copy()):  # the same buffers, new contents
        bound.input.update_inplace(batch)
        bound.run()
        logits, probs = bound.binding.copy_outputs_to_cpu()
        expected = session.run(None, {"image": batch})
        assert np.array_equal(logits, expected[0]) and np.array_equal(probs, expected[1])


def test_ort_cuda_is_not_installed_exactly_when_the_provider_is_missing() -> None:
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    reason = OnnxRuntimeBackend.unavailable("cuda")
    assert (reason is None) == has_cuda
    if not has_cuda:
        assert reason == f"not installed: {CUDA_INSTALL_HINT}"
    assert OnnxRuntimeBackend.unavailable("cpu") is None


def test_the_environment_names_the_onnxruntime_that_was_imported() -> None:
    import onnxruntime as ort

    build = onnxruntime_build()
    assert build is not None and build["version"] == ort.__version__
    assert build["providers"] == ort.get_available_providers()
    env = environment()
    assert env["onnxruntime"] == build and env["packages"]["onnxruntime"] == ort.__version__
    # which distribution installed the module: the one whose files hold it, not the one named onnxruntime
    module_dir = Path(ort.__file__).resolve().parent

    class Dist:
        def __init__(self, name: str, root: Path) -> None:
            self.metadata, self.root = {"Name": name}, root

        def locate_file(self, path: str) -> Path:
            return self.root / path

    cpu_elsewhere = Dist("onnxruntime", Path("/elsewhere/site-packages"))
    gpu_here = Dist("onnxruntime-gpu", module_dir.parent)
    assert onnxruntime_build([cpu_elsewhere, gpu_here])["distribution"] == "onnxruntime-gpu"
    both_here = [Dist("onnxruntime", module_dir.parent), gpu_here]  # installed over each other: said, not guessed
    assert onnxruntime_build(both_here)["distribution"] == ["onnxruntime", "onnxruntime-gpu"]
    assert onnxruntime_build([cpu_elsewhere])["distribution"] == "unknown"


# --- the offline bundle and the one-command run (benchmarks/cuda.sh, benchmarks/bundle.py) ---------------

CUDA_SCRIPT = REPO / "benchmarks" / "cuda.sh"
DEBIAN_DATA = Path("/usr/share/datasets/fashion-mnist")
GZ_FILES = [
    f"{n}.gz"
    for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
]
needs_gz = pytest.mark.skipif(
    not all((DEBIAN_DATA / f).is_file() for f in GZ_FILES), reason=f"needs the data set's gz files in {DEBIAN_DATA}"
)
# Everything a CUDA run needs, as a target's package list: no wheel to fetch, so no network.
HAS_EVERYTHING = "numpy\npillow\nimagecodecs\nclick\nmatplotlib\nonnx\nonnxruntime\nprotobuf\nprometheus-client\n"


def _script(*args: str, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CUDA_SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO
    )


def test_the_wheels_a_target_lacks_come_from_its_package_list() -> None:
    have = bundle.read_package_list((REPO / "benchmarks" / "gpu-machine-packages.txt").read_text())
    assert {"torch", "onnxruntime", "prometheus-client"} <= have and "imagecodecs" not in have
    assert bundle.missing(have, REPO / "pyproject.toml") == ["imagecodecs>=2024.1.1"]
    pip_list = "Package    Version\n---------- -------\nNumPy      2.5.2\nprometheus_client 0.2\n"
    assert bundle.read_package_list(pip_list) == {"numpy", "prometheus-client"}
    lacking = bundle.missing({"numpy"}, REPO / "pyproject.toml")
    assert "onnxruntime>=1.20" in lacking and not any(r.startswith(("torch", "starlette")) for r in lacking)


def test_sizes_are_binary_units() -> None:
    assert bundle.parse_size("64M") == 64 << 20 == bundle.parse_size("64MiB")
    assert bundle.parse_size("500k") == 500 << 10 and bundle.parse_size("123") == 123
    with pytest.raises(bundle.BundleError, match="expected a number of bytes"):
        bundle.parse_size("lots")


@needs_gz
def test_a_large_file_splits_into_parts_that_join_back(tmp_path: Path) -> None:
    source = DEBIAN_DATA / "train-images-idx3-ubyte.gz"  # 26 MB: a wheel-sized real file
    parts = bundle.split(source, 10 << 20, tmp_path)
    assert [p.name for p in parts] == [f"{source.name}.part-{i:03d}" for i in range(3)]
    assert all(p.stat().st_size <= 10 << 20 for p in parts)
    assert bundle.join(tmp_path) == [tmp_path / source.name]
    assert (tmp_path / source.name).read_bytes() == source.read_bytes()
    parts[1].write_bytes(parts[1].read_bytes()[:-1] + b"\0")  # one byte off in transit
    with pytest.raises(bundle.BundleError, match="do not join into the file they were cut from"):
        bundle.join(tmp_path)
    parts[2].unlink()
    with pytest.raises(bundle.BundleError, match=r"parts missing .*part-002"):
        bundle.join(tmp_path)


@needs_gz
def test_the_bundle_holds_the_project_the_data_and_nothing_else_under_64_mib(tmp_path: Path) -> None:
    have = tmp_path / "have.txt"
    have.write_text(HAS_EVERYTHING)
    done = _script("--bundle", str(tmp_path / "b"), "--target-packages", str(have))
    assert done.returncode == 0, done.stderr
    b = tmp_path / "b"
    assert sorted(p.name for p in b.iterdir()) == ["README.txt", "SHA256SUMS", "data", "project", "wheels"]
    assert sorted(p.name for p in (b / "data").iterdir()) == sorted(GZ_FILES)
    assert list((b / "wheels").iterdir()) == []  # the target has every package: nothing to bring
    for kept in (
        "pyproject.toml",
        "benchmarks/cuda.sh",
        "benchmarks/bundle.py",
        "artifacts/fmnist_mlp.pt2",
        "tests/conftest.py",
    ):
        assert (b / "project" / kept).is_file(), kept
    assert not (b / "project" / ".venv").exists() and not (b / "project" / ".git").exists()
    assert bundle.tree_size(b) <= 64 << 20
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=b, capture_output=True, text=True)
    assert sums.returncode == 0 and sums.stdout.count(": OK") == 4
    assert "benchmarks/cuda.sh --python python3 --offline" in (b / "README.txt").read_text()
    small = _script("--bundle", str(tmp_path / "c"), "--target-packages", str(have), "--max-size", "1M")
    assert small.returncode == 1 and "over the 1M limit" in small.stderr


def test_the_bundle_dry_run_fetches_for_the_target_interpreter_and_writes_nothing(tmp_path: Path) -> None:
    done = _script("--bundle", str(tmp_path / "b"), "--python-version", "3.13", "--ort-gpu", "1.31.1", "--dry-run")
    assert done.returncode == 0, done.stderr
    text = done.stderr
    assert "wheels the target lacks (from benchmarks/gpu-machine-packages.txt): imagecodecs>=2024.1.1" in text
    assert "pip download --quiet --no-deps --only-binary=:all: --python-version 3.13 --implementation cp" in text
    assert f"-d {tmp_path}/b/wheels imagecodecs>=2024.1.1" in text
    assert "onnxruntime-gpu==1.31.1" in text and f"--size 60M --output {tmp_path}/b.ort-gpu" in text
    assert not (tmp_path / "b").exists()


def _offline_run(tmp_path: Path, out: Path, budget: int) -> subprocess.CompletedProcess:
    """cuda.sh --offline from a bundle made here, with the network closed and an nvidia-smi stand-in."""
    bundle_dir = tmp_path / "b"
    if not bundle_dir.is_dir():
        have = tmp_path / "have.txt"
        have.write_text(HAS_EVERYTHING)
        made = _script("--bundle", str(bundle_dir), "--without-project", "--target-packages", str(have))
        assert made.returncode == 0, made.stderr
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "nvidia-smi").write_text('#!/bin/sh\n[ "$1" = -L ] && echo "GPU 0: stand-in" || echo stand-in\n')
    (fake / "nvidia-smi").chmod(0o755)
    closed = "http://127.0.0.1:9"  # nothing listens: any network use fails
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "TMPDIR": str(tmp_path)}
    env |= {"PIP_NO_INDEX": "1", "https_proxy": closed, "http_proxy": closed, "HTTPS_PROXY": closed}
    args = ("--python", sys.executable, "--offline", "--from", str(bundle_dir), "--output", str(out))
    return _script(*args, "--budget", str(budget), env=env)


def _steps(out: Path) -> dict[str, str]:
    return {r.split("\t")[1]: r.split("\t")[2] for r in (out / "steps.tsv").read_text().splitlines()[1:]}


@needs_gz
def test_an_offline_run_installs_from_the_bundle_alone_and_keeps_to_its_budget(tmp_path: Path) -> None:
    # No GPU here: an nvidia-smi stand-in only lets the run past its preflight. What needs no GPU must work
    # with the network closed (installing into a virtual environment over this interpreter's packages, the
    # data, the re-export check); what needs one fails as a step, said, not papered over; the summary and
    # the archive are still written. A second run with a budget far below the work stops at the budget.
    out = tmp_path / "reports" / "cuda"
    done = _offline_run(tmp_path, out, budget=400)
    assert done.returncode == 1, done.stderr
    rows = _steps(out)
    assert [rows[s] for s in ("join-wheels", "venv", "install-wheels", "install-project", "data")] == ["ok"] * 5, rows
    assert rows["environment"] == "failed (1)"  # torch sees no GPU
    assert rows["cuda-tests-verdict"] == "failed (1)"  # every CUDA test skipped: the run did not check them
    gpu_steps = [rows[s] for s in ("latency", "parity", "train-speed", "train-100-epochs")]
    assert all(v.startswith("failed") for v in gpu_steps), rows
    assert rows["summary"] == "ok" and (out / "summary.md").is_file(), rows
    with tarfile.open(out.parent / "cuda.tar.gz") as archive:
        names = archive.getnames()
    assert {"cuda/steps.tsv", "cuda/summary.md"} <= set(names) and any(n.startswith("cuda/logs/") for n in names)
    assert (out / "logs" / "05-data.log").is_file()

    short = tmp_path / "reports-short" / "cuda"
    done = _offline_run(tmp_path, short, budget=6)
    assert done.returncode == 1, done.stderr
    rows = _steps(short)
    assert "not run (budget spent)" in rows.values(), rows
    assert rows["summary"] == "not run (budget spent)", rows
    # every step that ran had its timeout cut to what was left of the budget
    limits = [int(r.split("\t")[4]) for r in (short / "steps.tsv").read_text().splitlines()[1:]]
    assert max(limits) <= 6, limits
    assert (short.parent / "cuda.tar.gz").is_file()


@pytest.mark.slow
def test_files_this_torch_cannot_load_are_reexported_here_and_recorded(tmp_path: Path, data) -> None:
    import shutil

    import torch

    from fmnist_deploy import runtime
    from fmnist_deploy.benchmarks.reexport import check_and_reexport

    arts = tmp_path / "artifacts"
    shutil.copytree(ARTIFACTS, arts, ignore=shutil.ignore_patterns("bench", "*.png", "checkpoint.pt"))
    assert check_and_reexport(arts, tmp_path / "unused")[0] == arts  # every file loads: nothing to do
    assert not (tmp_path / "unused").exists()
    (arts / "fmnist_mlp.pt2").write_bytes(b"PK\x03\x04 not an archive this torch reads")
    folder, record = check_and_reexport(arts, tmp_path / "models", data.root)
    assert folder == tmp_path / "models"
    assert set(record["files"]) == {"fmnist_mlp.pt2"} and record["torch_here"] == torch.__version__
    entry = record["files"]["fmnist_mlp.pt2"]
    assert entry["torch_exported_with"] == "2.14.1" and entry["torch_reexported_with"] == torch.__version__
    assert json.loads((folder / "reexport.json").read_text()) == record
    assert (folder / "fmnist_mlp.pt2.gate.json").is_file()  # through the export gate
    with np.load(ARTIFACTS / "golden.npz") as golden:
        logits = runtime.load(folder / "fmnist_mlp.pt2").predict(golden["images"]).logits
        assert np.abs(logits - golden["logits"]).max() <= 1e-5
