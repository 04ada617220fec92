"""Latency statistics and the machine's arithmetic ceiling (pure functions of numbers)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

FLOP_PER_IMAGE = 2 * (784 * 128 + 128 * 64 + 64 * 10)  # 109 184 multiply-adds = 218 368 FLOP


def summarise(samples_ns: list[int], batch: int) -> dict[str, Any]:
    """p50/p90/p99/p99.9/mean/stdev in µs and images per second of repeated calls."""
    us = np.asarray(samples_ns, dtype=np.float64) / 1e3
    mean = float(us.mean())
    return {
        "batch": batch,
        "repetitions": int(us.size),
        "p50_us": float(np.percentile(us, 50)),
        "p90_us": float(np.percentile(us, 90)),
        "p99_us": float(np.percentile(us, 99)),
        "p99_9_us": float(np.percentile(us, 99.9)),
        "mean_us": mean,
        "stdev_us": float(us.std(ddof=1)) if us.size > 1 else 0.0,
        "min_us": float(us.min()),
        "images_per_s": batch / (mean / 1e6),
    }


def sgemm_peak_gflops(n: int = 2048, repetitions: int = 5) -> float:
    """Single-precision GEMM peak: best of `repetitions` n x n x n float32 matmuls on all cores (numpy's BLAS)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b  # warm-up: threads, pages
    best = min(_timed(lambda: a @ b) for _ in range(repetitions))
    return 2 * n**3 / best / 1e9


def _timed(fn: Any) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1e9


def ceiling_images_per_s(peak_gflops: float) -> float:
    """Images/s the model's FLOPs allow at `peak_gflops`: the arithmetic ceiling."""
    return peak_gflops * 1e9 / FLOP_PER_IMAGE


BYTES_IN_PER_IMAGE = 28 * 28  # uint8 pixels: what crosses the host -> device link per image
BYTES_OUT_PER_IMAGE = 2 * 10 * 4  # float32 logits and probabilities, device -> host (another copy engine)


def gpu_ceilings(fp32_tflops: float, h2d_gb_per_s: float) -> dict[str, Any]:
    """Images/s a GPU's two measured ceilings allow, and which binds each mode (pure).

    Resident (input already on the GPU, answers left there): the fp32 arithmetic. Host -> host:
    the smaller of that and the host -> device copy of 784 bytes an image.
    """
    compute = fp32_tflops * 1e12 / FLOP_PER_IMAGE
    copy = h2d_gb_per_s * 1e9 / BYTES_IN_PER_IMAGE
    return {
        "fp32_tflops": fp32_tflops,
        "h2d_gb_per_s": h2d_gb_per_s,
        "compute_images_per_s": compute,
        "h2d_images_per_s": copy,
        "resident_images_per_s": compute,
        "host_to_host_images_per_s": min(compute, copy),
        "host_to_host_binds": "host->device copy" if copy < compute else "fp32 arithmetic",
    }


def measure_gpu_ceilings(device: str = "cuda", repetitions: int = 10) -> dict[str, Any]:
    """The GPU's fp32 matmul peak (TF32 off, 8192^3) and pinned host -> device bandwidth (256 MiB), each the
    best of `repetitions` timed with CUDA events after a warm-up; then gpu_ceilings of the two."""
    import torch

    def best_ms(fn: Any) -> float:
        fn()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(repetitions):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        return min(times)

    def matmul_tflops(n: int = 8192) -> float:
        generator = torch.Generator(device=device).manual_seed(0)
        a = torch.rand((n, n), device=device, generator=generator)  # random, never zeros: zeros run faster
        b = torch.rand((n, n), device=device, generator=generator)
        return 2 * n**3 / (best_ms(lambda: a @ b) / 1e3) / 1e12

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 the backends compute in, not TF32
    try:
        tflops = matmul_tflops()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    host = torch.randint(0, 256, (256 << 20,), dtype=torch.uint8).pin_memory()
    dev = torch.empty_like(host, device=device)
    gbps = host.numel() / (best_ms(lambda: dev.copy_(host, non_blocking=True)) / 1e3) / 1e9
    return {
        **gpu_ceilings(tflops, gbps),
        "gpu": torch.cuda.get_device_name(device),
        "method": f"best of {repetitions} after a warm-up, CUDA events: fp32 8192^3 torch matmul (TF32 off) on "
        "random data; 256 MiB pinned uint8 host->device copy",
    }
