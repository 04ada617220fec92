"""One row per exported file, as `yolo benchmark` gives: format, precision, size on disk, test accuracy,
agreement with eager PyTorch, p50 latency at batch 1 and throughput at batch 1 000.

An fp16 ONNX file (ONNX Runtime's float16 converter, float32 inputs and outputs kept) is
built in a temporary folder and measured beside them, to show whether it would be worth
shipping on this machine; it is not one of the exported files.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.benchmarks.latency import TARGETS, runtime_targets, time_calls
from fmnist_deploy.benchmarks.stats import summarise
from fmnist_deploy.contract import WEIGHTS_NAME
from fmnist_deploy.kinds import KIND, READER, kind_named
from fmnist_deploy.machine import environment

# labels of latency.TARGETS: every kind the runtime reads, with the backend `auto` picks for it
ROWS = tuple(label for label, target in runtime_targets().items() if READER[target.backend].auto)
FP16_LABEL = "onnxruntime-fp16 (not shipped)"


def _fp16_copy(onnx_path: Path, folder: Path) -> Path:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    path = folder / "fmnist_mlp.fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(onnx_path), keep_io_types=True), path)
    return path


def _file(artifacts: Path, name: str, scratch: Path) -> Path | None:
    """The exported file, or for a kind whose bytes are not committed (the ONNX Runtime format) one made here
    from the file it is made from; None when neither is there."""
    path = artifacts / name
    kind = kind_named(path)
    if path.is_file() or kind.reproducible or kind.source is None:
        return path if path.is_file() else None
    source = artifacts / KIND[kind.source].file_name
    if not source.is_file():
        return None
    from importlib import import_module

    import_module(kind.exporter).derive(source, scratch / name)
    return scratch / name


def _row(
    label: str, path: Path, backend: str, images: np.ndarray, labels: np.ndarray, reference: Any, budget_s: float
) -> dict[str, Any]:
    from fmnist_deploy import runtime

    predictor = runtime.load(path, backend=backend, trust=runtime.Trust(code=True))  # the user's own exports
    out = predictor.predict(images)
    one, thousand = images[:1], images[:1000]
    b1 = summarise(time_calls(lambda: predictor.predict(one), budget_s, 5, 3), 1)
    b1000 = summarise(time_calls(lambda: predictor.predict(thousand), budget_s, 5, 3), 1000)
    return {
        "label": label,
        "file": path.name,
        "format": predictor.metadata.get("format"),
        "precision": "fp16" if "fp16" in label else predictor.metadata.get("precision"),
        "size_bytes": path.stat().st_size,
        "accuracy": float((out.indices == labels).mean()),
        "max_abs_logit_diff": float(np.abs(out.logits.astype(np.float64) - reference.logits).max()),
        "predictions_differing_from_eager": int((out.indices != reference.indices).sum()),
        "p50_us_batch_1": b1["p50_us"],
        "images_per_s_batch_1000": b1000["images_per_s"],
    }


def measure(
    artifacts: Path, images: np.ndarray, labels: np.ndarray, *, budget_s: float = 0.5, fp16: bool = True
) -> dict[str, Any]:
    """Every exported file on the CPU (plus the fp16 candidate): size, accuracy, parity, speed."""
    from fmnist_deploy import runtime

    reference = runtime.load(artifacts / WEIGHTS_NAME, backend="eager").predict(images)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label in ROWS:
            target = TARGETS[label]
            path = _file(artifacts, target.file, Path(scratch))
            if path is None:
                rows.append({"label": label, "file": target.file, "error": "no such file"})
                continue
            if path.parent == Path(scratch):
                label = f"{label} (converted here, not committed)"
            rows.append(_row(label, path, target.backend, images, labels, reference, budget_s))
    if fp16 and (artifacts / TARGETS["onnxruntime"].file).is_file():
        with tempfile.TemporaryDirectory() as scratch:
            path = _fp16_copy(artifacts / TARGETS["onnxruntime"].file, Path(scratch))
            row = _row(FP16_LABEL, path, "onnxruntime", images, labels, reference, budget_s)
            row["format"] = "onnx"
            rows.append(row)
    return {
        "benchmark": "formats",
        "images": int(len(labels)),
        "budget_s": budget_s,
        "rows": rows,
        "environment": environment(),
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The formats table as Markdown."""
    env = report["environment"]
    lines = [
        f"Exported files on the CPU ({env['cpu']}, {env['usable_cores']} cores), {report['images']} test images",
        "",
        "| file | format | precision | size (KB) | accuracy | max abs dlogit vs eager | predictions ≠ eager "
        "| p50 µs, batch 1 | images/s, batch 1 000 |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['file']} | — | — | — | — | — | — | — | {r['error']} |")
            continue
        name = r["file"] if "not " not in r["label"] else f"{r['file']} ({r['label'].split('(', 1)[1]}"
        lines.append(
            f"| {name} | {r['format']} | {r['precision']} | {r['size_bytes'] / 1024:,.0f} | {r['accuracy']:.4f} | "
            f"{r['max_abs_logit_diff']:.2e} | {r['predictions_differing_from_eager']} | {r['p50_us_batch_1']:,.1f} | "
            f"{r['images_per_s_batch_1000']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """p50 latency at batch 1 and throughput at batch 1 000 per file, as bars."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    from fmnist_deploy.atomic import atomic_path

    rows = [r for r in report["rows"] if "error" not in r]
    names = [r["label"] for r in rows]
    fig = Figure(figsize=(11, 4))
    ax_lat, ax_thr = fig.subplots(1, 2)
    ax_lat.barh(names, [r["p50_us_batch_1"] for r in rows], color="tab:blue")
    ax_lat.set(xlabel="p50 µs per call, batch 1 (lower is better)", title="Latency")
    ax_thr.barh(names, [r["images_per_s_batch_1000"] for r in rows], color="tab:green")
    ax_thr.set(xlabel="images / s, batch 1 000 (higher is better)", title="Throughput")
    ax_thr.set_yticks(range(len(names)), [""] * len(names))
    ax_thr.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))  # no "1e6" offset
    for ax in (ax_lat, ax_thr):
        ax.grid(alpha=0.3, axis="x")
        ax.invert_yaxis()
    env = report.get("environment", {})
    fig.suptitle(f"Every exported file — {env.get('cpu', '?')}, {env.get('usable_cores', '?')} cores", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None})
