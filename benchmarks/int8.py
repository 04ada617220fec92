"""int8 two ways: the shipped dynamic quantisation beside static QDQ calibrated on training images.

Both files are made from the same fp32 ONNX file in a scratch folder. Accuracy on the full
test set; throughput at batch 1 and 1 000 in interleaved rounds (each round times every
file for a fixed budget and keeps its fastest call; medians over the rounds).
"""

from __future__ import annotations

import statistics
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.benchmarks.latency import rotated, time_calls
from fmnist_deploy.export.quantize import (
    SETTINGS,
    STATIC_SETTINGS,
    calibration_images,
    quantize_dynamic_int8,
    quantize_static_qdq,
)
from fmnist_deploy.machine import environment

BATCHES = (1, 1000)


def measure(
    fp32: Path,
    train_images: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    rounds: int = 5,
    budget_s: float = 0.3,
    calibration_count: int = 1000,
) -> dict[str, Any]:
    """Accuracy and throughput of fp32, dynamic int8 and static QDQ int8 from the same file."""
    import onnxruntime as ort

    calibration = calibration_images(train_images, calibration_count)
    with tempfile.TemporaryDirectory() as scratch:
        files = {
            "fp32": fp32,
            "int8-dynamic": Path(scratch) / "dynamic.onnx",
            "int8-static-qdq": Path(scratch) / "static.onnx",
        }
        quantize_dynamic_int8(fp32, files["int8-dynamic"])
        quantize_static_qdq(fp32, files["int8-static-qdq"], calibration)
        sessions = {
            name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for name, path in files.items()
        }
        sizes = {name: path.stat().st_size for name, path in files.items()}
    classes = {name: session.run(None, {"image": test_images})[0].argmax(1) for name, session in sessions.items()}
    rows: dict[str, dict[str, Any]] = {
        name: {
            "accuracy": float((classes[name] == test_labels).mean()),
            "bytes": sizes[name],
            "differing_from_fp32": None if name == "fp32" else int((classes[name] != classes["fp32"]).sum()),
        }
        for name in sessions
    }
    fastest_s: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in sessions}
    for r in range(rounds):
        for name in rotated(sessions, r):
            for batch in BATCHES:
                feed = {"image": np.ascontiguousarray(test_images[:batch])}
                samples = time_calls(partial(sessions[name].run, None, feed), budget_s, 3, 3)
                fastest_s[name][batch].append(min(samples) / 1e9)
    fp32_acc = rows["fp32"]["accuracy"]
    for name, row in rows.items():
        row["accuracy_drop_points"] = 100 * (fp32_acc - row["accuracy"])
        for batch in BATCHES:
            best = statistics.median(fastest_s[name][batch])
            row[f"b{batch}_us"] = best * 1e6
            row[f"b{batch}_images_per_s"] = batch / best
    for row in rows.values():
        for batch in BATCHES:
            row[f"b{batch}_speed_vs_fp32"] = rows["fp32"][f"b{batch}_us"] / row[f"b{batch}_us"]
    return {
        "benchmark": "int8",
        "calibration_images": len(calibration),
        "test_images": int(len(test_labels)),
        "rounds": rounds,
        "settings": {"int8-dynamic": SETTINGS, "int8-static-qdq": STATIC_SETTINGS},
        "rows": rows,
        "environment": environment(),
    }


def markdown(report: dict[str, Any]) -> str:
    """The comparison as a Markdown table."""
    lines = [
        "# int8: dynamic (shipped) vs static QDQ",
        "",
        f"Static QDQ calibrated on {report['calibration_images']} training images (every "
        f"{60000 // report['calibration_images']}th); accuracy on {report['test_images']} test images; "
        f"throughput = fastest call per round, median of {report['rounds']} interleaved rounds.",
        "",
        "| file | accuracy | drop (points) | predictions ≠ fp32 | bytes | batch 1 µs | batch 1000 µs | images/s @1000 | speed vs fp32 @1 | @1000 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in report["rows"].items():
        differing = "—" if r["differing_from_fp32"] is None else r["differing_from_fp32"]
        lines.append(
            f"| {name} | {r['accuracy']:.4f} | {r['accuracy_drop_points']:.2f} | {differing} | {r['bytes']:,} | "
            f"{r['b1_us']:.1f} | {r['b1000_us']:.1f} | {r['b1000_images_per_s']:,.0f} | {r['b1_speed_vs_fp32']:.2f}× | "
            f"{r['b1000_speed_vs_fp32']:.2f}× |"
        )
    env = report["environment"]
    lines += ["", f"Machine: {env.get('cpu', '?')}, {env.get('usable_cores', '?')} cores.", ""]
    return "\n".join(lines)
