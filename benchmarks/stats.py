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
