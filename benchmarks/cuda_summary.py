"""The CUDA run's summary: every step's outcome and the targets, measured against what was asked.

    python -m fmnist_deploy.benchmarks.cuda_summary OUT
    python -m fmnist_deploy.benchmarks.cuda_summary --environment OUT

Reads what benchmarks/cuda.sh left in OUT (steps.tsv, latency_cpu_cuda.json, parity.json,
train_speed_cuda.json, train/history.json and train/metrics.json, cuda-tests.xml,
models/reexport.json, environment.json) and writes OUT/summary.md and OUT/summary.json.
A report that is missing (its step failed) is said to be missing, never filled in.
With --environment it records the machine first: OUT/environment.json (versions, the
onnxruntime build imported, torch's CUDA and the GPU) and OUT/gpu.txt (`nvidia-smi -q`).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from fmnist_deploy.atomic import write_text_atomic

# The targets of the GPU path (on an H200), as the product states them.
TARGETS = {
    "batch1_host_to_host_p50_us": 60.0,  # at most
    "batch100000_host_to_host_images_per_s": 25e6,  # at least
    "train_100_epochs_s": 15.0,  # at most
    "train_accuracy": (0.8388, 0.003),  # CPU record, and the allowed distance
}
TOOLKIT = ("onnxruntime", "torchscript", "pt2", "eager")  # the runtime's backends (peers excluded)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _steps(out: Path) -> list[dict[str, str]]:
    try:
        with open(out / "steps.tsv", encoding="utf-8") as f:
            return list(csv.DictReader(f, delimiter="\t"))
    except OSError:
        return []


def summarise(out: Path) -> dict[str, Any]:
    """The targets and what the run measured for each (None where its report is missing)."""
    from fmnist_deploy.benchmarks.junit import verdict

    latency = _json(out / "latency_cpu_cuda.json")
    cells = latency["cells"] if latency else []

    def best(batch: int, key: str, lowest: bool) -> dict[str, Any] | None:
        rows = [
            c
            for c in cells
            if c["device"] == "cuda" and c["mode"] == "model" and c["batch"] == batch and c["backend"] in TOOLKIT
        ]
        if not rows:
            return None
        chosen = (min if lowest else max)(rows, key=lambda c: c[key])
        return {
            "backend": chosen["backend"],
            key: chosen[key],
            "fraction_of_ceiling": chosen.get("fraction_of_ceiling"),
        }

    b1 = best(1, "p50_us", lowest=True)
    big = best(100_000, "images_per_s", lowest=False)
    parity = _json(out / "parity.json")
    cuda_rows = [r for r in (parity or {}).get("rows", []) if r["device"] == "cuda"]
    history = _json(out / "train" / "history.json")
    metrics = _json(out / "train" / "metrics.json")
    steps = {s["name"]: s for s in _steps(out)}
    train_step = steps.get("train-100-epochs")
    epochs = (history or {}).get("epochs", [])
    tests_ok, tests_line = verdict(out / "cuda-tests.xml") if (out / "cuda-tests.xml").is_file() else (False, "missing")
    accuracy = metrics.get("test_accuracy") if metrics else None
    record, slack = TARGETS["train_accuracy"]
    results = {
        "batch1_host_to_host_p50_us": b1,
        "batch100000_host_to_host_images_per_s": big,
        "parity_cuda": {
            "rows": len(cuda_rows),
            "passed": bool(cuda_rows) and all(r.get("pass", True) for r in cuda_rows if "skipped" not in r),
            "not_installed": [f"{r['file']} {r['backend']}: {r['skipped']}" for r in cuda_rows if "skipped" in r],
        }
        if parity
        else None,
        "train_100_epochs": {
            "step_seconds": float(train_step["seconds"]) if train_step else None,
            "step_status": train_step["status"] if train_step else None,
            "epochs": len(epochs),
            "sum_of_epoch_seconds": sum(e["seconds"] for e in epochs) if epochs else None,
            "test_accuracy": accuracy,
        },
        "cuda_tests": {"passed": tests_ok, "line": tests_line},
        "reexport": _json(out / "models" / "reexport.json"),
        "ceilings": (latency or {}).get("ceiling", {}).get("gpu"),
        "crossover": (latency or {}).get("summary", {}).get("cuda_overtakes_cpu_at_batch"),
        "steps": list(steps.values()),
        "environment": _json(out / "environment.json"),
    }
    train = results["train_100_epochs"]
    results["met"] = {
        "batch1_host_to_host_p50_us": b1 is not None and b1["p50_us"] <= TARGETS["batch1_host_to_host_p50_us"],
        "batch100000_host_to_host_images_per_s": big is not None
        and big["images_per_s"] >= TARGETS["batch100000_host_to_host_images_per_s"],
        "train_100_epochs_s": train["sum_of_epoch_seconds"] is not None
        and train["epochs"] == 100
        and train["sum_of_epoch_seconds"] <= TARGETS["train_100_epochs_s"],
        "train_accuracy": accuracy is not None and abs(accuracy - record) <= slack,
        "parity_cuda": bool(results["parity_cuda"] and results["parity_cuda"]["passed"]),
    }
    return results


def _fmt(value: Any, spec: str) -> str:
    return "missing" if value is None else format(value, spec)


def _by(cell: dict[str, Any] | None) -> str:
    return f" ({cell['backend']})" if cell else ""


def to_markdown(s: dict[str, Any]) -> str:
    """The summary as Markdown: targets first, then the ceilings, the crossover and every step."""
    env = s.get("environment") or {}
    met = s["met"]
    b1, big, train = s["batch1_host_to_host_p50_us"], s["batch100000_host_to_host_images_per_s"], s["train_100_epochs"]
    yes = {True: "**met**", False: "**not met**"}
    lines = [
        f"CUDA run on {env.get('gpu', 'an unrecorded GPU')} (torch {env.get('packages', {}).get('torch', '?')}, "
        f"CUDA {env.get('torch_cuda', '?')}, onnxruntime {(env.get('onnxruntime') or {}).get('distribution', '?')} "
        f"{(env.get('onnxruntime') or {}).get('version', '?')}); CPU {env.get('cpu', '?')}.",
        "",
        "| target | asked | measured | |",
        "|---|---|---|---|",
        f"| batch 1, host -> host p50 | ≤ 60 µs | {_fmt(b1 and b1['p50_us'], ',.1f')} µs{_by(b1)} "
        f"| {yes[met['batch1_host_to_host_p50_us']]} |",
        f"| batch 100 000, host -> host | ≥ 25 M images/s | {_fmt(big and big['images_per_s'] / 1e6, ',.1f')} M"
        f"{_by(big)} | {yes[met['batch100000_host_to_host_images_per_s']]} |",
        f"| 100 epochs of the course recipe | ≤ 15 s | {_fmt(train['sum_of_epoch_seconds'], '.1f')} s over "
        f"{train['epochs']} epochs (the whole command: {_fmt(train['step_seconds'], '.0f')} s, "
        f"{train['step_status'] or 'not run'}) | {yes[met['train_100_epochs_s']]} |",
        f"| test accuracy | 0.8388 ± 0.003 | {_fmt(train['test_accuracy'], '.4f')} | {yes[met['train_accuracy']]} |",
        f"| CUDA answers = CPU answers (parity) | within the golden tolerance | "
        f"{'missing' if s['parity_cuda'] is None else ('pass' if s['parity_cuda']['passed'] else 'FAIL')} "
        f"| {yes[met['parity_cuda']]} |",
        "",
        f"CUDA tests: {'PASS' if s['cuda_tests']['passed'] else 'FAIL'} ({s['cuda_tests']['line']})",
    ]
    if s["parity_cuda"] and s["parity_cuda"]["not_installed"]:
        lines.append("Parity rows not installed: " + "; ".join(s["parity_cuda"]["not_installed"]))
    gpu = s.get("ceilings")
    if gpu:
        lines.append(
            f"GPU ceilings: fp32 {gpu['fp32_tflops']:.1f} TFLOP/s, pinned host->device {gpu['h2d_gb_per_s']:.1f} GB/s; "
            f"host -> host is bound by the {gpu['host_to_host_binds']} "
            f"({gpu['host_to_host_images_per_s'] / 1e6:,.1f} M images/s)."
        )
    if s.get("crossover"):
        lines.append(f"CUDA overtakes the CPU at batch: {s['crossover']}")
    if s.get("reexport"):
        files = s["reexport"]["files"]
        lines.append(
            "Re-exported here: "
            + "; ".join(
                f"{n} (torch {v['torch_exported_with']} -> {v['torch_reexported_with']})" for n, v in files.items()
            )
        )
    lines += ["", "| step | status | seconds | timeout s |", "|---|---|---:|---:|"]
    lines += [f"| {st['name']} | {st['status']} | {st['seconds']} | {st['timeout_s']} |" for st in s["steps"]]
    return "\n".join(lines) + "\n"


def record_environment(out: Path) -> dict[str, Any]:
    """OUT/environment.json and OUT/gpu.txt: what the run ran on."""
    import subprocess

    import torch

    from fmnist_deploy.machine import environment

    cuda = torch.cuda.is_available()
    env = environment(
        torch_cuda=torch.version.cuda,
        gpu=torch.cuda.get_device_name(0) if cuda else None,
        gpu_capability=".".join(map(str, torch.cuda.get_device_capability(0))) if cuda else None,
    )
    write_text_atomic(out / "environment.json", json.dumps(env, indent=2) + "\n")
    try:
        smi = subprocess.run(["nvidia-smi", "-q"], capture_output=True, text=True, check=False, timeout=30)
        text = smi.stdout + smi.stderr
    except (OSError, subprocess.TimeoutExpired) as exc:
        text = f"nvidia-smi -q: {exc}\n"
    write_text_atomic(out / "gpu.txt", text)
    return env


def main(argv: list[str] | None = None) -> int:
    """Write OUT/summary.md and OUT/summary.json and print the Markdown (or, with --environment, the machine)."""
    args = sys.argv[1:] if argv is None else argv
    record = bool(args) and args[0] == "--environment"
    args = args[1:] if record else args
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m fmnist_deploy.benchmarks.cuda_summary [--environment] OUT", file=sys.stderr)
        return 2
    out = Path(args[0])
    if record:
        env = record_environment(out)
        print(json.dumps(env, indent=2))
        return 0 if env["gpu"] else 1
    summary = summarise(out)
    markdown = to_markdown(summary)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomic(out / "summary.md", markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
