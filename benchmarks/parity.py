"""Parity and accuracy of every exported format x backend x device x precision on the full test set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.benchmarks.latency import runtime_targets
from fmnist_deploy.contract import INT8_MAX_ACCURACY_DROP_POINTS, LOGIT_TOLERANCE, WEIGHTS_NAME
from fmnist_deploy.kinds import KIND, kind_named
from fmnist_deploy.machine import environment

# (model file, runtime backend, precision): every packaged file with every backend that reads it (fmnist_deploy.kinds)
ROWS = tuple(
    (target.file, target.backend, "int8" if kind_named(target.file) is KIND["int8"] else "fp32")
    for target in runtime_targets().values()
    if kind_named(target.file).packaged
)


def _compare(out: Any, reference: Any, labels: np.ndarray, ref_acc: float, precision: str) -> dict[str, Any]:
    """Accuracy and agreement of one backend's prediction with the eager reference, and the verdict (pure)."""
    accuracy = float((out.indices == labels).mean())
    row = {
        "accuracy": accuracy,
        "accuracy_drop_points": 100 * (ref_acc - accuracy),
        "predictions_differing_from_eager": int((out.indices != reference.indices).sum()),
        "max_abs_logit_diff": float(np.abs(out.logits.astype(np.float64) - reference.logits).max()),
        "max_abs_prob_diff": float(np.abs(out.probabilities.astype(np.float64) - reference.probabilities).max()),
    }
    row["pass"] = (
        row["accuracy_drop_points"] <= INT8_MAX_ACCURACY_DROP_POINTS
        if precision == "int8"
        else row["predictions_differing_from_eager"] == 0 and row["max_abs_logit_diff"] <= LOGIT_TOLERANCE
    )
    return row


def measure(artifacts: Path, images: np.ndarray, labels: np.ndarray, devices: tuple[str, ...]) -> dict[str, Any]:
    """One row per file x device (ONNX also with graph optimisation off); verdicts against eager PyTorch on the CPU."""
    from fmnist_deploy import runtime

    reference = runtime.load(artifacts / WEIGHTS_NAME, backend="eager").predict(images)
    ref_acc = float((reference.indices == labels).mean())
    rows = []
    for file_name, backend, precision in ROWS:
        path = artifacts / file_name
        variants = [{"optimization": "all"}, {"optimization": "disabled"}] if backend == "onnxruntime" else [{}]
        for device in devices:
            for options in variants:
                head = {"file": file_name, "backend": backend, "device": device, "precision": precision, **options}
                if not path.is_file():  # a missing file is a failing row, never a row left out
                    rows.append({**head, "error": f"{path}: no such file", "pass": False})
                    continue
                reason = runtime.BACKENDS[backend].unavailable(device)
                if reason is not None:  # an optional package absent: said, neither measured nor failed
                    rows.append({**head, "skipped": reason})
                    continue
                try:
                    # the user's own exports (--artifacts): TorchScript / .pt2 files are trusted
                    predictor = runtime.load(
                        path, backend=backend, device=device, trust=runtime.Trust(code=True), **options
                    )
                except runtime.DeviceError as exc:
                    rows.append({**head, "skipped": str(exc)})
                    continue
                except runtime.RuntimeFailure as exc:
                    rows.append({**head, "error": str(exc), "pass": False})
                    continue
                rows.append({**head, **_compare(predictor.predict(images), reference, labels, ref_acc, precision)})
    measured = [r for r in rows if "skipped" not in r]
    return {
        "benchmark": "parity",
        "images": int(len(labels)),
        "reference": {"backend": "eager", "device": "cpu", "accuracy": ref_acc},
        "criteria": {
            "fp32": f"0 differing predictions and max |dlogit| <= {LOGIT_TOLERANCE}",
            "int8": f"accuracy drop <= {INT8_MAX_ACCURACY_DROP_POINTS} points",
        },
        "rows": rows,
        "measured": len(measured),
        # no FAIL without a failing row; nothing measured at all is a failure of its own
        "passed": bool(measured) and all(r["pass"] for r in measured),
        "environment": environment(),
    }


def _skip_words(reason: str) -> str:
    return reason if reason.startswith("not installed") else f"skipped: {reason}"


def _verdict(report: dict[str, Any]) -> str:
    if report["measured"] == 0:
        return "NOTHING MEASURED"
    return "PASS" if report["passed"] else "FAIL"


def to_markdown(report: dict[str, Any]) -> str:
    """The parity matrix as a Markdown table with its verdict."""
    lines = [
        f"Parity on {report['images']} test images against eager PyTorch (CPU, accuracy {report['reference']['accuracy']:.4f}): "
        f"**{_verdict(report)}**",
        "",
        "| file | backend | device | precision | ORT graph opt. | accuracy | differing predictions | max abs dlogit | max abs dprob | verdict |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in report["rows"]:
        opt = r.get("optimization", "—")
        if "skipped" in r:
            lines.append(
                f"| {r['file']} | {r['backend']} | {r['device']} | {r['precision']} | {opt} | — | — | — | — | {_skip_words(r['skipped'])} |"
            )
            continue
        if "error" in r:
            lines.append(
                f"| {r['file']} | {r['backend']} | {r['device']} | {r['precision']} | {opt} | — | — | — | — | FAIL: {r['error']} |"
            )
            continue
        lines.append(
            f"| {r['file']} | {r['backend']} | {r['device']} | {r['precision']} | {opt} | {r['accuracy']:.4f} | "
            f"{r['predictions_differing_from_eager']} | {r['max_abs_logit_diff']:.2e} | {r['max_abs_prob_diff']:.2e} | "
            f"{'pass' if r['pass'] else 'FAIL'} |"
        )
    return "\n".join(lines) + "\n"
