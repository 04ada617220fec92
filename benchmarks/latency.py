"""Latency and throughput of every backend x device x batch size, model call alone and end to end.

Per cell: the model is loaded (creation time), called once (first-inference time),
warmed up, then called repeatedly until a time budget is spent (at least
`min_repetitions` calls); every call is timed with perf_counter_ns. Each backend's
predict returns host numpy arrays, so a CUDA call is complete (synchronised) when it
returns; nothing synchronises a CPU run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fmnist_deploy.benchmarks.numpy_ref import NumpyMLP
from fmnist_deploy.benchmarks.stats import FLOP_PER_IMAGE, ceiling_images_per_s, sgemm_peak_gflops, summarise
from fmnist_deploy.contract import INT8_ONNX_NAME, STEM, SUFFIXES, WEIGHTS_NAME
from fmnist_deploy.machine import environment
from fmnist_deploy.models import models_dir

DEFAULT_BATCHES = (1, 8, 32, 100, 1000, 10000)


class Target(NamedTuple):
    """One row label of the grid: the model file it times, and the runtime backend (None: not the runtime)."""

    file: str
    backend: str | None


ONNX_FILE = STEM + SUFFIXES["onnx"]
TARGETS: dict[str, Target] = {
    "onnxruntime": Target(ONNX_FILE, "onnxruntime"),
    "onnxruntime-int8": Target(INT8_ONNX_NAME, "onnxruntime"),
    "torchscript": Target(STEM + SUFFIXES["torchscript"], "torchscript"),
    "pt2": Target(STEM + SUFFIXES["pt2"], "pt2"),
    "eager": Target(WEIGHTS_NAME, "eager"),
    "ort-session": Target(ONNX_FILE, None),  # bare InferenceSession.run: what the toolkit adds on top is visible
    "numpy": Target(WEIGHTS_NAME, None),  # the same network in plain numpy: the reference floor
}

Predict = Callable[[np.ndarray], Any]


@dataclass(frozen=True)
class Config:
    """What one latency run measures: files, backends, devices, batch sizes and time budgets."""

    artifacts: Path = field(default_factory=models_dir)  # the packaged model files
    backends: tuple[str, ...] = tuple(TARGETS)
    devices: tuple[str, ...] = ("cpu",)
    batches: tuple[int, ...] = DEFAULT_BATCHES
    budget_s: float = 1.0  # per cell
    min_repetitions: int = 5
    warmup: int = 3
    e2e_max_batch: int = 1000  # decoding 10 000 PNGs per call says nothing new
    threads: int | None = None  # ONNX Runtime intra-op threads; None = its default


@dataclass
class Opened:
    """A loaded target: its predict callable and what it reports about itself (provider, threads)."""

    predict: Predict
    info: dict[str, Any] = field(default_factory=dict)


def open_target(config: Config, backend: str, device: str) -> Opened:
    """Load one backend on one device; `info` says what really runs (provider, threads)."""
    file_name, runtime_backend = TARGETS[backend]
    path = config.artifacts / file_name
    if backend == "numpy":
        if device != "cpu":
            raise ValueError("the numpy reference runs on the CPU only")
        return Opened(NumpyMLP(path), {"provider": "numpy", "threads": _blas_threads()})
    if backend == "ort-session":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if config.threads is not None:
            options.intra_op_num_threads = config.threads
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), options, providers=providers)
        return Opened(
            lambda x: session.run(None, {"image": x}),
            {"provider": session.get_providers()[0], "threads": config.threads or "default"},
        )
    from fmnist_deploy import runtime

    options = {"threads": config.threads} if runtime_backend == "onnxruntime" and config.threads else {}
    predictor = runtime.load(path, backend=runtime_backend, device=device, **options)
    if runtime_backend == "onnxruntime":
        info = {"provider": predictor.backend.providers[0], "threads": config.threads or "default"}
    else:
        import torch

        info = {"provider": f"torch:{device}", "threads": torch.get_num_threads()}
    return Opened(predictor.predict, info)


def _blas_threads() -> Any:
    try:
        from threadpoolctl import threadpool_info

        return [{"api": p["internal_api"], "threads": p["num_threads"]} for p in threadpool_info()]
    except ImportError:
        return "unknown"


def time_calls(fn: Callable[[], Any], budget_s: float, min_repetitions: int, warmup: int) -> list[int]:
    """Call `fn` `warmup` times, then time calls until the budget is spent (at least `min_repetitions`)."""
    for _ in range(warmup):
        fn()
    samples: list[int] = []
    deadline = time.perf_counter_ns() + int(budget_s * 1e9)
    while len(samples) < min_repetitions or time.perf_counter_ns() < deadline:
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return samples


def write_pngs(folder: Path, images: np.ndarray) -> list[Path]:
    """Each image as an 8-bit grayscale PNG named by its position (00000.png, ...)."""
    from PIL import Image

    paths = []
    for i, image in enumerate(images):
        path = folder / f"{i:05d}.png"
        Image.fromarray(image, mode="L").save(path)
        paths.append(path)
    return paths


def _end_to_end(predict: Predict, files: list[Path]) -> Any:
    """Decode + preprocess every file, then one model call: what a file-based service does per batch."""
    from fmnist_deploy.runtime.images import read_image

    return predict(np.stack([read_image(p) for p in files]))


def available_devices() -> tuple[str, ...]:
    """cpu, plus cuda when torch sees a GPU (never an error: the grid just has fewer rows)."""
    try:
        import torch

        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    except ImportError:
        return ("cpu",)


def measure(
    config: Config, images: np.ndarray, *, progress: Callable[[Iterable[Any]], Iterable[Any]] = iter
) -> dict[str, Any]:
    """Every cell of the grid, the ceiling, and the derived ratios, as a JSON-ready report."""
    pool = np.ascontiguousarray(np.resize(images, (max(config.batches), 28, 28)))  # tile the test set if needed
    # The peak is the best of a measurement before and one after the grid: a busy moment
    # on a shared machine can only lower a measured peak, never raise it.
    peak_before = sgemm_peak_gflops()
    grid = [(b, d) for b in config.backends for d in config.devices if not (b == "numpy" and d != "cpu")]
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        files = write_pngs(Path(scratch), pool[: min(config.e2e_max_batch, max(config.batches))])
        for backend, device in progress(grid):
            start = time.perf_counter_ns()
            opened = open_target(config, backend, device)
            creation_ms = (time.perf_counter_ns() - start) / 1e6
            start = time.perf_counter_ns()
            opened.predict(pool[:1])
            first_ms = (time.perf_counter_ns() - start) / 1e6
            for batch in config.batches:
                x = pool[:batch]
                samples = time_calls(partial(opened.predict, x), config.budget_s, config.min_repetitions, config.warmup)
                cells.append(_cell(backend, device, "model", batch, samples, creation_ms, first_ms, opened.info))
                if batch <= config.e2e_max_batch and backend not in ("ort-session", "numpy"):
                    samples = time_calls(
                        partial(_end_to_end, opened.predict, files[:batch]), config.budget_s, config.min_repetitions, 1
                    )
                    cells.append(
                        _cell(backend, device, "end_to_end", batch, samples, creation_ms, first_ms, opened.info)
                    )
    peak_after = sgemm_peak_gflops()
    peak = max(peak_before, peak_after)
    ceiling = ceiling_images_per_s(peak)
    for cell in cells:
        cell["fraction_of_ceiling"] = cell["images_per_s"] / ceiling
    return {
        "benchmark": "latency",
        "config": {
            "backends": list(config.backends),
            "devices": list(config.devices),
            "batches": list(config.batches),
            "budget_s": config.budget_s,
            "min_repetitions": config.min_repetitions,
            "warmup": config.warmup,
            "e2e_max_batch": config.e2e_max_batch,
            "threads": config.threads,
        },
        "ceiling": {
            "sgemm_gflops": peak,
            "sgemm_gflops_before": peak_before,
            "sgemm_gflops_after": peak_after,
            "flop_per_image": FLOP_PER_IMAGE,
            "images_per_s": ceiling,
            "method": "best of 5 numpy float32 2048x2048x2048 matmuls on all cores, before and after the "
            "grid; the higher peak / 218 368 FLOP per image",
        },
        "cells": cells,
        "summary": summarise_grid(cells),
        "environment": environment(),
    }


def _cell(
    backend: str,
    device: str,
    mode: str,
    batch: int,
    samples: list[int],
    creation_ms: float,
    first_ms: float,
    info: dict[str, Any],
) -> dict[str, Any]:
    return {
        "backend": backend,
        "device": device,
        "mode": mode,
        **summarise(samples, batch),
        "creation_ms": creation_ms,
        "first_inference_ms": first_ms,
        **info,
    }


def _find(
    cells: list[dict[str, Any]], backend: str, device: str, batch: int, mode: str = "model"
) -> dict[str, Any] | None:
    return next(
        (c for c in cells if (c["backend"], c["device"], c["batch"], c["mode"]) == (backend, device, batch, mode)), None
    )


def summarise_grid(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The ratios the targets are stated in, derived from cells of one run."""
    summary: dict[str, Any] = {}
    # The ceiling is a float32 one: int8 runs integer kernels and is reported on its own.
    big = [
        c
        for c in cells
        if c["mode"] == "model"
        and c["device"] == "cpu"
        and c["batch"] >= 1000
        and c["backend"] not in ("numpy", "ort-session", "onnxruntime-int8")
    ]
    if big:
        best = max(big, key=lambda c: c["images_per_s"])
        summary["best_cpu_batch_ge_1000"] = {
            k: best[k] for k in ("backend", "batch", "images_per_s", "fraction_of_ceiling")
        }
    ort1, np1, bare1 = (_find(cells, b, "cpu", 1) for b in ("onnxruntime", "numpy", "ort-session"))
    if ort1 and np1:
        summary["predict_b1_over_numpy_b1"] = ort1["p50_us"] / np1["p50_us"]
    if bare1 and np1:
        summary["bare_session_b1_over_numpy_b1"] = bare1["p50_us"] / np1["p50_us"]
    fp32, int8 = _find(cells, "onnxruntime", "cpu", 1000), _find(cells, "onnxruntime-int8", "cpu", 1000)
    if fp32 and int8:
        summary["int8_over_fp32_throughput_b1000"] = int8["images_per_s"] / fp32["images_per_s"]
    crossover = {}
    for backend in sorted({c["backend"] for c in cells if c["device"] == "cuda"}):
        batches = sorted({c["batch"] for c in cells if c["backend"] == backend and c["mode"] == "model"})
        crossover[backend] = next(
            (
                b
                for b in batches
                if (g := _find(cells, backend, "cuda", b))
                and (h := _find(cells, backend, "cpu", b))
                and g["images_per_s"] > h["images_per_s"]
            ),
            None,
        )
    if crossover:
        summary["cuda_overtakes_cpu_at_batch"] = crossover
    return summary
