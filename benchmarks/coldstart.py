"""Cold start: wall time of a fresh `fmnist-predict` process on one image, per backend."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fmnist_deploy.benchmarks.latency import TARGETS
from fmnist_deploy.errors import ModelError
from fmnist_deploy.machine import environment

MODELS = {backend: TARGETS[backend].file for backend in ("onnxruntime", "torchscript", "pt2", "eager")}


class ColdStartError(ModelError):
    """A model file is missing or a predict process failed."""


def measure(
    artifacts: Path, image: Path, repetitions: int = 5, backends: tuple[str, ...] = tuple(MODELS)
) -> dict[str, Any]:
    """Median and min wall seconds of `python -m fmnist_deploy.runtime.cli IMAGE --model M`, interleaved across backends."""
    if "onnxruntime" not in backends:
        raise ValueError("the cold-start comparison needs the onnxruntime backend")
    missing = [str(artifacts / MODELS[b]) for b in backends if not (artifacts / MODELS[b]).is_file()]
    if missing:
        raise ColdStartError(f"{', '.join(missing)}: no such file; run `make export` first")
    times: dict[str, list[float]] = {b: [] for b in backends}
    outputs: dict[str, str] = {}
    for _ in range(repetitions):  # interleaved, so machine noise hits every backend alike
        for backend in backends:
            model = MODELS[backend]
            start = time.perf_counter_ns()
            done = subprocess.run(
                [sys.executable, "-m", "fmnist_deploy.runtime.cli", str(image), "--model", str(artifacts / model)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
                raise ColdStartError(f"fmnist-predict --model {artifacts / model} failed: {reason}")
            times[backend].append((time.perf_counter_ns() - start) / 1e9)
            outputs[backend] = done.stdout.strip()
    rows = {
        b: {"median_s": statistics.median(t), "min_s": min(t), "runs": t, "output": outputs[b]}
        for b, t in times.items()
    }
    onnx = rows["onnxruntime"]["median_s"]
    fastest_torch = min((rows[b]["median_s"] for b in backends if b != "onnxruntime"), default=float("nan"))
    return {
        "benchmark": "coldstart",
        "image": str(image),
        "repetitions": repetitions,
        "backends": rows,
        "torch_over_onnx": fastest_torch / onnx,
        "environment": environment(),
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The cold-start table and the torch / ONNX ratio as Markdown."""
    lines = [
        f"Cold start of `fmnist-predict {report['image']}` (a fresh process, median of {report['repetitions']})",
        "",
        "| backend | median s | min s |",
        "|---|---:|---:|",
    ]
    for backend, row in report["backends"].items():
        lines.append(f"| {backend} | {row['median_s']:.2f} | {row['min_s']:.2f} |")
    lines += ["", f"The fastest torch backend takes **{report['torch_over_onnx']:.1f}×** as long as ONNX Runtime."]
    return "\n".join(lines) + "\n"
