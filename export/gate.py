"""The export gate: check every item, report each, then fail for real.

Order: the file loads and describes itself; structure (checker, opset, no training
nodes, names/dtypes/shapes); every batch size runs; values match eager PyTorch on
the golden vectors and, when given, the whole test set. Every check is recorded,
then one GateError is raised if any failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from export import onnx_format, pt2_format, torchscript_format
from export.checks import GateError, GateReport, Runner, first_line
from export.contract import CONTRACT_VERSION, N_CLASSES, REQUIRED_KEYS, sha256_file, sidecar_path
from export.golden import Golden
from training.atomic import write_text_atomic

FORMATS: dict[str, ModuleType] = {"onnx": onnx_format, "torchscript": torchscript_format, "pt2": pt2_format}
BATCH_SIZES = (1, 2, 7, 100, 10_000)
LOGIT_TOLERANCE = 1e-5
PROB_SUM_TOLERANCE = 1e-6
INT8_MAX_ACCURACY_DROP = 0.005  # 0.5 percentage points on the test set


@dataclass(frozen=True)
class EagerReference:
    """The full test set with eager PyTorch's logits for it."""

    images: np.ndarray  # (10000, 28, 28) uint8
    labels: np.ndarray  # (10000,) int64
    logits: np.ndarray  # (10000, 10) float32


def format_of(path: Path) -> str:
    for name, module in FORMATS.items():
        if path.name.endswith(module.SUFFIX):
            return name
    known = ", ".join(m.SUFFIX for m in FORMATS.values())
    raise ValueError(f"{path}: unknown model file type; expected one of {known}")


def report_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + ".gate.json")


def compare(logits: np.ndarray, probs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Parity statistics of one backend's output against eager logits (pure)."""
    return {
        "max_abs_logit_diff": float(np.abs(logits.astype(np.float64) - reference).max()),
        "max_prob_sum_error": float(np.abs(probs.astype(np.float64).sum(axis=1) - 1.0).max()),
        "argmax_agreement": float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean()),
    }


def _parity(report: GateReport, name: str, stats: dict[str, float], int8: bool) -> None:
    detail = (f"max |dlogit| {stats['max_abs_logit_diff']:.3g}, max |sum(p)-1| {stats['max_prob_sum_error']:.3g}, "
              f"argmax agreement {stats['argmax_agreement']:.2%}")
    if int8:  # quantised weights cannot match to 1e-5; accuracy is checked instead
        report.add(name, stats["max_prob_sum_error"] <= PROB_SUM_TOLERANCE * 10, detail + " (int8: accuracy gated below)")
        return
    ok = (stats["max_abs_logit_diff"] <= LOGIT_TOLERANCE and stats["max_prob_sum_error"] <= PROB_SUM_TOLERANCE
          and stats["argmax_agreement"] == 1.0)
    report.add(name, ok, detail)


def _metadata_checks(report: GateReport, path: Path, fmt: str, meta: dict[str, Any], weights_sha256: str | None) -> None:
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    report.add("metadata", not missing and meta.get("contract_version") == CONTRACT_VERSION and meta.get("format") == fmt,
               f"missing {missing}" if missing else f"contract {meta.get('contract_version')}, format {meta.get('format')}, "
               f"{len(meta.get('class_names', []))} class names")
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        report.add("sidecar", False, f"{sidecar.name} is missing")
    else:
        side = json.loads(sidecar.read_text())
        file_sha = sha256_file(path)
        same = {k: v for k, v in side.items() if k not in ("file", "file_sha256")} == meta
        report.add("sidecar", same and side.get("file_sha256") == file_sha,
                   f"{sidecar.name}: metadata {'equal' if same else 'DIFFERS from the file'}, "
                   f"file sha256 {'matches' if side.get('file_sha256') == file_sha else 'does not match'}")
    if weights_sha256 is not None:
        report.add("weights", meta.get("weights_sha256") == weights_sha256,
                   f"built from weights {str(meta.get('weights_sha256'))[:12]}…, expected {weights_sha256[:12]}…")


def _run_checks(report: GateReport, label: str, run: Runner, golden: Golden | None, test_set: EagerReference | None, int8: bool) -> None:
    rng = np.random.default_rng(0)
    outcome = {}
    for n in BATCH_SIZES:
        try:
            logits, probs = run(rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        except Exception as exc:  # noqa: BLE001 - a batch size the file rejects is the failure being checked
            outcome[n] = f"error ({type(exc).__name__})"
            continue
        good = logits.shape == (n, N_CLASSES) == probs.shape and logits.dtype == probs.dtype == np.float32
        outcome[n] = "ok" if good else f"bad output {logits.dtype} {logits.shape}"
    report.add(f"{label}:batch_sizes", all(v == "ok" for v in outcome.values()),
               ", ".join(f"{n}:{v}" for n, v in outcome.items()))
    if golden is not None:
        _parity(report, f"{label}:golden_parity", compare(*run(golden.images), golden.logits), int8)
    if test_set is not None:
        logits, probs = run(test_set.images)
        _parity(report, f"{label}:test_set_parity", compare(logits, probs, test_set.logits), int8)
        accuracy = float((logits.argmax(1) == test_set.labels).mean())
        eager = float((test_set.logits.argmax(1) == test_set.labels).mean())
        drop = eager - accuracy
        report.add(f"{label}:accuracy", drop <= (INT8_MAX_ACCURACY_DROP if int8 else 0.0),
                   f"{accuracy:.4f} on {len(test_set.labels)} test images (eager {eager:.4f}, drop {drop * 100:.2f} points)")


def verify(
    path: Path,
    *,
    expected_opset: int | None = None,
    golden: Golden | None = None,
    test_set: EagerReference | None = None,
    weights_sha256: str | None = None,
    write_report: bool = True,
    raise_on_failure: bool = True,
) -> GateReport:
    """Check one exported file against the contract; raise GateError after reporting every failure."""
    path = Path(path)
    report = GateReport(file=path.name, format="unknown")
    try:
        report.format = format_of(path)
    except ValueError as exc:
        report.add("format", False, str(exc))
    if report.format in FORMATS:
        _verify_file(report, path, FORMATS[report.format], expected_opset, golden, test_set, weights_sha256)
    if write_report and path.parent.is_dir():
        write_text_atomic(report_path(path), json.dumps(report.to_dict(), indent=2) + "\n")
    if raise_on_failure and not report.passed:
        raise GateError(report)
    return report


def _verify_file(report: GateReport, path: Path, fmt: ModuleType, expected_opset: int | None,
                 golden: Golden | None, test_set: EagerReference | None, weights_sha256: str | None) -> None:
    if not path.is_file():
        report.add("loads", False, "no such file")
        return
    try:
        meta = fmt.read_metadata(path)
        # Without an explicit request, the opset the file claims is the one it must have.
        structure = fmt.structure_checks(path, expected_opset if expected_opset is not None else meta.get("opset"))
        runners = fmt.runners(path)
    except Exception as exc:  # noqa: BLE001 - any loader failure means the file is unusable; it is reported, not hidden
        report.add("loads", False, f"{type(exc).__name__}: {first_line(exc)}")
        return
    report.add("loads", True, f"{path.stat().st_size} bytes")
    _metadata_checks(report, path, report.format, meta, weights_sha256)
    report.checks.extend(structure)
    if golden is not None and meta.get("weights_sha256") not in (None, golden.weights_sha256):
        report.add("golden_weights", False, f"golden vectors are of weights {golden.weights_sha256[:12]}…, the file of {meta['weights_sha256'][:12]}…")
    int8 = meta.get("precision") == "int8"
    for label, run in runners.items():
        try:
            _run_checks(report, label, run, golden, test_set, int8)
        except Exception as exc:  # noqa: BLE001 - a runtime failure is a gate failure, reported with its message
            report.add(f"{label}:runs", False, f"{type(exc).__name__}: {first_line(exc)}")
