"""Cold start: wall time of a fresh `fmnist-predict` process on one image, per backend."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.env import environment

MODELS = {"onnxruntime": "fmnist_mlp.onnx", "torchscript": "fmnist_mlp.torchscript", "pt2": "fmnist_mlp.pt2",
          "eager": "fmnist_mlp.pt"}


def measure(artifacts: Path, image: Path, repetitions: int = 5, backends: tuple[str, ...] = tuple(MODELS)) -> dict[str, Any]:
    """Median and min wall seconds of `python -m runtime.cli IMAGE --model M`, interleaved across backends."""
    if "onnxruntime" not in backends:
        raise ValueError("the cold-start comparison needs the onnxruntime backend")
    times: dict[str, list[float]] = {b: [] for b in backends}
    outputs: dict[str, str] = {}
    for _ in range(repetitions):  # interleaved, so machine noise hits every backend alike
        for backend in backends:
            model = MODELS[backend]
            start = time.perf_counter_ns()
            done = subprocess.run([sys.executable, "-m", "runtime.cli", str(image), "--model", str(artifacts / model)],
                                  capture_output=True, text=True, check=True)
            times[backend].append((time.perf_counter_ns() - start) / 1e9)
            outputs[backend] = done.stdout.strip()
    rows = {b: {"median_s": statistics.median(t), "min_s": min(t), "runs": t, "output": outputs[b]} for b, t in times.items()}
    onnx = rows["onnxruntime"]["median_s"]
    fastest_torch = min((rows[b]["median_s"] for b in backends if b != "onnxruntime"), default=float("nan"))
    return {"benchmark": "coldstart", "image": str(image), "repetitions": repetitions, "backends": rows,
            "torch_over_onnx": fastest_torch / onnx, "environment": environment()}


def to_markdown(report: dict[str, Any]) -> str:
    lines = [f"Cold start of `fmnist-predict {report['image']}` (a fresh process, median of {report['repetitions']})", "",
             "| backend | median s | min s |", "|---|---:|---:|"]
    for backend, row in report["backends"].items():
        lines.append(f"| {backend} | {row['median_s']:.2f} | {row['min_s']:.2f} |")
    lines += ["", f"The fastest torch backend takes **{report['torch_over_onnx']:.1f}×** as long as ONNX Runtime."]
    return "\n".join(lines) + "\n"
