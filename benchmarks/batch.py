"""Batch throughput: single-process fmnist-predict against fmnist-batch on Ray with 1 and 2 actors, on the
10 000 test images as PNG files and as one IDX file, in one run; Ray's start-up reported apart."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.benchmarks.latency import write_pngs
from fmnist_deploy.machine import environment


def _timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(images: np.ndarray, idx_file: Path, model: Path, actors: tuple[int, ...] = (1, 2)) -> dict[str, Any]:
    """Seconds and images/s of every path on both inputs (each run once, the machine otherwise idle)."""
    from fmnist_deploy.scaleout.ray_job import JobConfig, run_job, start_ray

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "pngs"
        folder.mkdir()
        write_pngs(folder, images)
        inputs = {"png files": folder, "idx file": idx_file}
        for label, path in inputs.items():
            seconds, done = _timed(
                lambda p=path: subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "fmnist_deploy.runtime.cli",
                        str(p),
                        "--model",
                        str(model),
                        "--json",
                        "--output",
                        str(Path(scratch) / "single.jsonl"),
                    ],
                    capture_output=True,
                    check=False,
                )
            )
            rows.append(
                {
                    "input": label,
                    "path": "fmnist-predict (one process)",
                    "seconds": seconds,
                    "images_per_s": len(images) / seconds,
                    "exit": done.returncode,
                }
            )
        ray_start, _ = _timed(lambda: start_ray(None))
        for n in actors:
            for label, path in inputs.items():
                output = Path(scratch) / f"ray-{n}-{label.replace(' ', '_')}.jsonl"
                seconds, counts = _timed(
                    lambda p=path, o=output, k=n: run_job(JobConfig(model=model, output=o, actors=k), [p])
                )
                rows.append(
                    {
                        "input": label,
                        "path": f"fmnist-batch, Ray, {n} actor(s)",
                        "seconds": seconds,
                        "images_per_s": counts["rows"] / seconds,
                        "exit": 0 if not counts["failed"] else 1,
                    }
                )
    import ray

    ray.shutdown()
    return {
        "benchmark": "batch",
        "images": int(len(images)),
        "ray_start_s": ray_start,
        "rows": rows,
        "environment": environment(),
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The batch comparison as a Markdown table."""
    env = report["environment"]
    lines = [
        f"Batch inference of {report['images']} test images on {env['cpu']}, {env['usable_cores']} cores "
        f"(Ray's local start-up, {report['ray_start_s']:.1f} s, is not in the Ray rows)",
        "",
        "| path | input | seconds | images/s |",
        "|---|---|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(f"| {r['path']} | {r['input']} | {r['seconds']:.2f} | {r['images_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"
