"""Latency and throughput of every backend x device x batch size, model call alone and end to end.

Per cell: the model is loaded (creation time), called once (first-inference time),
warmed up, then called repeatedly until a time budget is spent (at least
`min_repetitions` calls); every call is timed with perf_counter_ns. Each backend's
predict returns host numpy arrays, so a CUDA call is complete (synchronised) when it
returns; nothing synchronises a CPU run.

Rows are the toolkit's backends and peers it is measured against: the bare ONNX Runtime
session, the network in numpy, `torch.compile` (inductor) of the eager model, and an
AOTInductor package compiled for this machine (`fmnist-export --format aoti`).

On CUDA two more things are timed apart: `resident` cells (the input already on the GPU,
the answers left there, the stream synchronised: what the model costs without the
host link), and the capture of each batch size's CUDA graph (`capture_ms`, never inside a
call's latency). A cell that cannot run for want of a package (ONNX Runtime without its
CUDA provider, OpenVINO absent) is listed under `not_installed` with the command that
installs it, never an abort.

Each row is measured against its own device's ceiling. CPU rows: the model's FLOPs at the
CPU's float32 GEMM peak. CUDA rows: the GPU's fp32 matmul peak and its measured pinned
host -> device bandwidth (784 bytes an image); resident cells against the first,
host -> host cells against the smaller of the two, which the report names.

The CPU ceiling: the model's FLOPs at the machine's float32 GEMM peak. The peak and the
fastest rows are measured in interleaved rounds (peak, rows, peak, rows, ...), so each
round's fraction compares numbers taken within a second of each other; the report gives
the median fraction and its spread.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fmnist_deploy.benchmarks.numpy_ref import NumpyMLP
from fmnist_deploy.benchmarks.stats import (
    FLOP_PER_IMAGE,
    ceiling_images_per_s,
    measure_gpu_ceilings,
    sgemm_peak_gflops,
    summarise,
)
from fmnist_deploy.contract import WEIGHTS_NAME
from fmnist_deploy.kinds import KIND, KINDS, READER, kind_named
from fmnist_deploy.machine import environment
from fmnist_deploy.models import models_dir

DEFAULT_BATCHES = (1, 8, 32, 100, 1000, 10000)


class Target(NamedTuple):
    """One row label of the grid: the model file it times, and the runtime backend (None: not the runtime)."""

    file: str
    backend: str | None


def runtime_targets() -> dict[str, Target]:
    """One row per kind the runtime reads, from the registry: a backend's own kind under the backend's name
    (onnxruntime, openvino, torchscript, pt2, eager), another kind as backend-kind (onnxruntime-int8)."""
    targets: dict[str, Target] = {}
    for kind in KINDS:
        for backend in kind.readers:
            if READER[backend].default_kind is kind:
                targets[backend] = Target(kind.file_name, backend)
            elif backend == kind.readers[0]:
                targets[f"{backend}-{kind.name}"] = Target(kind.file_name, backend)
    return targets


ONNX_FILE = KIND["onnx"].file_name
TARGETS: dict[str, Target] = {
    **runtime_targets(),
    "ort-session": Target(ONNX_FILE, None),  # bare InferenceSession.run: what the toolkit adds on top is visible
    "numpy": Target(WEIGHTS_NAME, None),  # the same network in plain numpy: the reference floor
    "torch-compile": Target(WEIGHTS_NAME, None),  # torch.compile (inductor) of the eager model: a peer
    "aoti": Target(WEIGHTS_NAME, None),  # an AOTInductor package built from the weights for this run: a peer
}
PEERS = ("ort-session", "numpy", "torch-compile", "aoti")  # measured beside the toolkit, not part of it
RIVALS = ("torch-compile", "aoti")  # the peers a user could deploy instead of the toolkit's backends


def _cuda(target: Target) -> bool:
    kind = kind_named(target.file)
    return target.backend is not None and "cuda" in READER[target.backend].devices and "cuda" in kind.devices


# the numpy floor, the rows whose backend or kind has no CUDA path, and the AOTInductor peer (compiled for the CPU)
CPU_ONLY = (
    "numpy",
    *(name for name, t in TARGETS.items() if t.backend is not None and not _cuda(t)),
    *(name for name in PEERS if name in KIND and "cuda" not in KIND[name].devices),
)

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
    aoti_package: Path | None = None  # a package from `fmnist-export --format aoti`; None = build one for the run
    ceiling_rounds: int = 5  # interleaved rounds of sgemm peak and the fastest rows


@dataclass
class Opened:
    """A loaded target: its predict callable and what it reports about itself (provider, threads).

    On CUDA, `resident(images)` returns a call that runs those images already on the GPU (and
    leaves the answers there), and `extra(batch)` what a cell adds about itself (capture time).
    """

    predict: Predict
    info: dict[str, Any] = field(default_factory=dict)
    resident: Callable[[np.ndarray], Callable[[], Any]] | None = None
    extra: Callable[[int], dict[str, Any]] | None = None


def unavailable(backend: str, device: str) -> str | None:
    """'not installed: pip install ...' when a row cannot run on `device` for want of a package, else None."""
    from fmnist_deploy import runtime

    runtime_backend = TARGETS[backend].backend
    if runtime_backend is not None:
        return runtime.BACKENDS[runtime_backend].unavailable(device)
    if backend == "ort-session":
        return runtime.BACKENDS["onnxruntime"].unavailable(device)
    return None


def open_target(config: Config, backend: str, device: str) -> Opened:
    """Load one backend on one device; `info` says what really runs (provider, threads)."""
    file_name, runtime_backend = TARGETS[backend]
    path = config.artifacts / file_name
    if backend in CPU_ONLY and device != "cpu":
        raise ValueError(f"{backend} runs on the CPU only")
    if backend == "torch-compile":
        return _torch_compiled(path, device)
    if backend == "aoti":
        if config.aoti_package is None:  # measure() builds one for the run
            raise ValueError("the aoti row needs a package (fmnist-export --format aoti)")
        return _aoti(config.aoti_package)
    if backend == "numpy":
        return Opened(NumpyMLP(path), {"provider": "numpy", "threads": _blas_threads()})
    if backend == "ort-session":
        import onnxruntime as ort

        options = ort.SessionOptions()
        if config.threads is not None:
            options.intra_op_num_threads = config.threads
        # TF32 off on CUDA as in the backend: the peer computes the same function, only without the toolkit
        providers = [("CUDAExecutionProvider", {"use_tf32": "0"})] if device == "cuda" else ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(path), options, providers=providers)
        return Opened(
            lambda x: session.run(None, {"image": x}),
            {"provider": session.get_providers()[0], "threads": config.threads or "default"},
        )
    from fmnist_deploy import runtime

    options = {"threads": config.threads} if runtime_backend in ("onnxruntime", "openvino") and config.threads else {}
    # a benchmark measures the user's own exports (--artifacts): their TorchScript / .pt2 files are trusted
    predictor = runtime.load(path, backend=runtime_backend, device=device, trust=runtime.Trust(code=True), **options)
    described = predictor.describe()  # what actually runs, as the loaded backend reports it
    provider = f"{described.provider} {described.precision}" if runtime_backend == "openvino" else described.provider
    opened = Opened(predictor.predict, {"provider": provider, "threads": described.threads or "default"})
    if device == "cuda":
        _cuda_extras(opened, predictor.backend)
    return opened


def _cuda_extras(opened: Opened, backend: Any) -> None:
    """The resident call and the per-batch capture record of a runtime backend on CUDA."""
    if backend.name == "onnxruntime":
        opened.info["provider_options"] = {
            k: v for k, v in backend.provider_options.items() if k in ("use_tf32", "enable_cuda_graph")
        }

        def ort_resident(images: np.ndarray) -> Callable[[], Any]:
            bound = backend.bind(images.shape[0])
            bound.input.update_inplace(images)
            return bound.run  # ORT waits for its stream before returning

        def ort_extra(batch: int) -> dict[str, Any]:
            return {
                "cuda_graph": backend.cuda_graph,
                "capture_ms": backend.capture_ms.get(batch),
                **({"cuda_graph_error": backend.cuda_graph_error} if backend.cuda_graph_error else {}),
            }

        opened.resident, opened.extra = ort_resident, ort_extra
        return
    runner = backend.runner

    def torch_resident(images: np.ndarray) -> Callable[[], Any]:
        import torch

        x = torch.from_numpy(images).to(runner.device)  # (N, 28, 28) uint8, on the GPU once
        return partial(runner.run_resident, x)

    def torch_extra(batch: int) -> dict[str, Any]:
        captured = batch in runner.graphs
        return {
            "cuda_graph": captured,
            "capture_ms": runner.capture_ms.get(batch) if captured else None,
            **({"cuda_graph_error": runner.graph_error} if runner.graph_error else {}),
        }

    opened.resident, opened.extra = torch_resident, torch_extra


def _torch_compiled(weights: Path, device: str) -> Opened:
    """torch.compile (inductor, default mode) of the eager model with its preprocessing; one graph per batch size."""
    import torch

    from fmnist_deploy import runtime

    eager = runtime.load(weights, backend="eager", device=device).backend
    compiled = torch.compile(eager.module, dynamic=False)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)  # one graph per batch

    @torch.inference_mode()
    def predict(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = compiled(torch.from_numpy(images).to(eager.torch_device))
        return logits.cpu().numpy(), probs.cpu().numpy()

    def resident(images: np.ndarray) -> Callable[[], Any]:
        x = torch.from_numpy(images).to(eager.torch_device)

        @torch.inference_mode()
        def call() -> Any:
            out = compiled(x)
            torch.cuda.current_stream(eager.torch_device).synchronize()
            return out

        return call

    opened = Opened(predict, {"provider": f"torch.compile:inductor:{device}", "threads": _torch_threads()})
    if device == "cuda":
        opened.resident = resident
    return opened


def _build_aoti(weights: Path, folder: Path) -> Path:
    """An AOTInductor package of the weights, compiled for this machine into `folder` (about a minute)."""
    from fmnist_deploy.contract import sha256_file
    from fmnist_deploy.export import aoti_format
    from fmnist_deploy.export.metadata import build_metadata
    from fmnist_deploy.export.wrapper import from_weights
    from fmnist_deploy.training.checkpoint import load_weights

    path = folder / KIND["aoti"].file_name
    weights_obj = load_weights(weights)
    aoti_format.export(from_weights(weights_obj), path, build_metadata(weights_obj, sha256_file(weights)))
    return path


def _aoti(package: Path) -> Opened:
    """A package loaded with torch._inductor.aoti_load_package (one this run built, or one the user vouches for)."""
    from fmnist_deploy.export import aoti_format

    run = aoti_format.runners(package)[aoti_format.NAME]
    isa = aoti_format.aoti_metadata(package).get("AOTI_CPU_ISA", "")
    return Opened(run, {"provider": f"aoti:cpu {isa}".strip(), "threads": _torch_threads()})


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _blas_threads() -> Any:
    try:
        from threadpoolctl import threadpool_info

        return [{"api": p["internal_api"], "threads": p["num_threads"]} for p in threadpool_info()]
    except ImportError:
        return "unknown"


def rotated(names: Iterable[str], round_index: int) -> list[str]:
    """`names` starting at position round_index (mod len): in interleaved rounds, who goes first rotates."""
    order = list(names)
    shift = round_index % len(order) if order else 0
    return order[shift:] + order[:shift]


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
    grid = [(b, d) for b in config.backends for d in config.devices if not (b in CPU_ONLY and d != "cpu")]
    cells: list[dict[str, Any]] = []
    not_installed: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory() as scratch:
        files = write_pngs(Path(scratch), pool[: min(config.e2e_max_batch, max(config.batches))])
        opened_cpu: dict[str, Opened] = {}
        for backend, device in progress(grid):
            reason = unavailable(backend, device)
            if reason is not None:  # a row that says what to install, never an abort
                not_installed.append({"backend": backend, "device": device, "reason": reason})
                continue
            build_s = None
            if backend == "aoti" and config.aoti_package is None:  # compiled once, apart from the load time
                start = time.perf_counter_ns()
                config = replace(config, aoti_package=_build_aoti(config.artifacts / WEIGHTS_NAME, Path(scratch)))
                build_s = (time.perf_counter_ns() - start) / 1e9
            start = time.perf_counter_ns()
            opened = open_target(config, backend, device)
            creation_ms = (time.perf_counter_ns() - start) / 1e6
            if build_s is not None:
                opened.info["build_s"] = build_s
            if device == "cpu":
                opened_cpu[backend] = opened
            start = time.perf_counter_ns()
            opened.predict(pool[:1])
            first_ms = (time.perf_counter_ns() - start) / 1e6
            for batch in config.batches:
                x = pool[:batch]
                samples = time_calls(partial(opened.predict, x), config.budget_s, config.min_repetitions, config.warmup)
                info = {**opened.info, **(opened.extra(batch) if opened.extra else {})}
                cells.append(_cell(backend, device, "model", batch, samples, creation_ms, first_ms, info))
                if opened.resident is not None:
                    call = opened.resident(x)
                    samples = time_calls(call, config.budget_s, config.min_repetitions, config.warmup)
                    cells.append(_cell(backend, device, "resident", batch, samples, creation_ms, first_ms, info))
                if batch <= config.e2e_max_batch and backend not in PEERS:
                    samples = time_calls(
                        partial(_end_to_end, opened.predict, files[:batch]), config.budget_s, config.min_repetitions, 1
                    )
                    cells.append(
                        _cell(backend, device, "end_to_end", batch, samples, creation_ms, first_ms, opened.info)
                    )
        interleaved = interleaved_ceiling(opened_cpu, pool, config)
    peak_after = sgemm_peak_gflops()
    peak = max(peak_before, peak_after, *interleaved.get("sgemm_gflops_rounds", []))
    ceiling = ceiling_images_per_s(peak)
    gpu = measure_gpu_ceilings() if any(c["device"] == "cuda" for c in cells) else None
    for cell in cells:
        cell["ceiling"], bound = cell_ceiling(cell, ceiling, gpu)
        cell["fraction_of_ceiling"] = cell["images_per_s"] / bound
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
            "method": "best of 5 numpy float32 2048x2048x2048 matmuls on all cores, before, during and after "
            "the grid; the highest peak / 218 368 FLOP per image",
            "interleaved": interleaved,
            **({"gpu": gpu} if gpu else {}),
        },
        "cells": cells,
        "not_installed": not_installed,
        "summary": {**summarise_grid(cells), **_interleaved_summary(interleaved)},
        "environment": environment(),
    }


def cell_ceiling(cell: dict[str, Any], cpu_images_per_s: float, gpu: dict[str, Any] | None) -> tuple[str, float]:
    """(name, images/s) of the ceiling a cell is measured against: its own device's, never the other's."""
    if cell["device"] != "cuda":
        return "cpu fp32 sgemm", cpu_images_per_s
    if gpu is None:
        raise ValueError("a CUDA cell needs the GPU's ceilings")
    if cell["mode"] == "resident":
        return "gpu fp32", gpu["resident_images_per_s"]
    binds = "gpu host->device copy" if gpu["host_to_host_binds"] == "host->device copy" else "gpu fp32"
    return binds, gpu["host_to_host_images_per_s"]


CEILING_BATCHES = (1000, 10000)


def interleaved_ceiling(opened: dict[str, Opened], pool: np.ndarray, config: Config) -> dict[str, Any]:
    """Rounds of (sgemm peak, then every float32 CPU row, toolkit and rivals, at batch 1 000 and 10 000): per
    round and row the fraction images/s / (peak / FLOP per image); medians and spreads over the rounds.

    On a shared machine a single cell can be off by a third; rows timed within a second of each
    other and of the peak, several times over, compare fairly.
    """
    batches = [b for b in CEILING_BATCHES if b in config.batches]
    rows = [r for r in opened if r not in ("numpy", "ort-session", "onnxruntime-int8")]
    if not batches or not rows or config.ceiling_rounds < 1:
        return {}
    peaks: list[float] = []
    fractions: dict[str, list[float]] = {f"{r}@{b}": [] for r in rows for b in batches}
    for _ in range(config.ceiling_rounds):
        peak = sgemm_peak_gflops(repetitions=3)
        peaks.append(peak)
        ceiling = ceiling_images_per_s(peak)
        for row in rows:
            for batch in batches:
                # The fastest call, as the peak is the fastest matmul: both estimate what the machine
                # does undisturbed, so a busy moment on a shared machine skews neither side.
                samples = time_calls(partial(opened[row].predict, pool[:batch]), 0.25, 3, 1)
                images_per_s = batch / (min(samples) / 1e9)
                fractions[f"{row}@{batch}"].append(images_per_s / ceiling)
    return {
        "rounds": config.ceiling_rounds,
        "sgemm_gflops_rounds": peaks,
        "fractions": {
            key: {"median": float(np.median(v)), "min": float(min(v)), "max": float(max(v)), "rounds": v}
            for key, v in fractions.items()
        },
        "method": "per round: best of 3 float32 2048^3 matmuls, then each row's fastest call at the batch size "
        "in 0.25 s; fraction = images/s / (that round's peak / FLOP per image)",
    }


def _interleaved_summary(interleaved: dict[str, Any]) -> dict[str, Any]:
    """The toolkit's best median fraction of the ceiling, and per batch size who is fastest in the rounds."""
    fractions = interleaved.get("fractions", {})
    if not fractions:
        return {}
    toolkit = {k: v for k, v in fractions.items() if k.split("@")[0] not in PEERS}
    summary: dict[str, Any] = {}
    if toolkit:
        key, best = max(toolkit.items(), key=lambda item: item[1]["median"])
        backend, batch = key.split("@")
        summary["ceiling_fraction_interleaved"] = {
            "backend": backend,
            "batch": int(batch),
            "median": best["median"],
            "min": best["min"],
            "max": best["max"],
        }
    fastest = {}
    for batch in sorted({int(k.split("@")[1]) for k in fractions}):
        scores = {k.split("@")[0]: v["median"] for k, v in fractions.items() if k.endswith(f"@{batch}")}
        entry = _toolkit_vs_rival(scores, "median_fraction")
        if entry is not None and "rival" in entry:
            fastest[str(batch)] = entry
    if fastest:
        summary["fastest_cpu_interleaved"] = fastest
    return summary


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


def _toolkit_vs_rival(scores: dict[str, float], unit: str) -> dict[str, Any] | None:
    """Of {row: score} (higher is faster): the toolkit's fastest float32 backend, the fastest rival, who wins."""
    ours = {b: v for b, v in scores.items() if b not in PEERS and b != "onnxruntime-int8"}
    rivals = {b: v for b, v in scores.items() if b in RIVALS}
    if not ours:
        return None
    best = max(ours, key=ours.__getitem__)
    entry: dict[str, Any] = {"toolkit": best, f"toolkit_{unit}": ours[best]}
    if rivals:
        rival = max(rivals, key=rivals.__getitem__)
        entry |= {"rival": rival, f"rival_{unit}": rivals[rival], "toolkit_is_fastest": ours[best] >= rivals[rival]}
    return entry


def _fastest_per_batch(cells: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per batch size on the CPU: the toolkit's fastest float32 backend and the fastest rival, and who wins.

    Rows are ranked by their median call (images/s at p50: a mean is one slow call away from another
    verdict), and a winner is `decided` only where the spread allows it: one side's p90 below the other's p50.
    """
    model = [c for c in cells if c["mode"] == "model" and c["device"] == "cpu"]
    out = {}
    for batch in sorted({c["batch"] for c in model}):
        row = {c["backend"]: c for c in model if c["batch"] == batch}
        entry = _toolkit_vs_rival({b: batch / (c["p50_us"] / 1e6) for b, c in row.items()}, "images_per_s")
        if entry is None:
            continue
        if "rival" in entry:
            ours, rival = row[entry["toolkit"]], row[entry["rival"]]
            entry["decided"] = ours["p90_us"] < rival["p50_us"] or rival["p90_us"] < ours["p50_us"]
        out[str(batch)] = entry
    return out


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
        and c["backend"] not in (*PEERS, "onnxruntime-int8")
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
    if ort1 and bare1:
        summary["predict_b1_over_bare_session_b1"] = ort1["p50_us"] / bare1["p50_us"]
    fastest = _fastest_per_batch(cells)
    if fastest:
        summary["fastest_cpu_per_batch"] = fastest
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
    cuda = _cuda_summary(cells)
    if cuda:
        summary["cuda"] = cuda
    return summary


def _cuda_summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per backend on CUDA: batch-1 p50 and the best images/s, host -> host and resident, with their fractions."""
    out: dict[str, Any] = {}
    for backend in sorted({c["backend"] for c in cells if c["device"] == "cuda"}):
        entry: dict[str, Any] = {}
        for mode, label in (("model", "host_to_host"), ("resident", "resident")):
            mine = [c for c in cells if (c["backend"], c["device"], c["mode"]) == (backend, "cuda", mode)]
            if not mine:
                continue
            one = next((c for c in mine if c["batch"] == 1), None)
            best = max(mine, key=lambda c: c["images_per_s"])
            if one is not None:
                entry[f"{label}_b1_p50_us"] = one["p50_us"]
            entry[f"{label}_best"] = {
                k: best.get(k) for k in ("batch", "images_per_s", "fraction_of_ceiling", "ceiling")
            }
        out[backend] = entry
    return out
