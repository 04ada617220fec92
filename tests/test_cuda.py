"""The CUDA paths' logic that a CPU can check: graph caches, chunking, provider options, the build that ran.

What needs a GPU (captures, streams, the numbers) is marked `cuda` in test_runtime.py,
test_training.py and test_benchmarks.py; here are only the parts that run the same way
without one, exercised for real (a real model on the CPU behind the streaming logic).
"""

from __future__ import annotations

import numpy as np
import pytest

from fmnist_deploy.machine import environment, onnxruntime_build
from fmnist_deploy.runtime.errors import OptionError
from fmnist_deploy.runtime.onnxruntime_backend import (
    CUDA_INSTALL_HINT,
    GraphIds,
    OnnxRuntimeBackend,
    cuda_provider_options,
)
from fmnist_deploy.runtime.torch_cuda import CudaOptions, GraphCache, chunk_plan, stream_chunks
from tests.conftest import ARTIFACTS


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
    # which distribution installed the module, from the files' owner, not from a distribution's name
    assert onnxruntime_build({"onnxruntime": ["onnxruntime-gpu"]})["distribution"] == "onnxruntime-gpu"
    assert onnxruntime_build({"onnxruntime": ["onnxruntime-gpu", "onnxruntime"]})["distribution"] == [
        "onnxruntime-gpu",
        "onnxruntime",
    ]  # both installed over each other: said, not guessed
