"""The export gate: check every item, report each, then fail for real.

Order: the file loads and describes itself; structure (checker, opset, no training
nodes, names/dtypes/shapes); every batch size runs; values match the references: the
golden vectors (always required) and, when the weights and the data set are at hand,
eager PyTorch on the whole test set. Every check is recorded, a reference that is
missing is reported with the option that supplies it, then one GateError is raised if
any check failed. The gate only reads: a report file is written where one is asked for.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmnist_deploy.atomic import write_text_atomic
from fmnist_deploy.bounds import MAX_MODEL_BYTES, check_zip
from fmnist_deploy.contract import (
    CONTRACT_VERSION,
    INT8_MAX_ACCURACY_DROP_POINTS,
    INT8_PROB_SUM_TOLERANCE,
    LOGIT_TOLERANCE,
    N_CLASSES,
    PROB_SUM_TOLERANCE,
    REQUIRED_KEYS,
    sidecar_path,
)
from fmnist_deploy.errors import ModelError, first_line
from fmnist_deploy.export.checks import GateError, GateReport, Runner
from fmnist_deploy.export.formats import FORMATS, ExportFormat, format_of
from fmnist_deploy.export.golden import Golden
from fmnist_deploy.exportset import read_current, resolve
from fmnist_deploy.integrity import IntegrityError, inspect_pt2, sidecar_check
from fmnist_deploy.kinds import KIND
from fmnist_deploy.machine import environment
from fmnist_deploy.runtime.onnx_check import MAX_ONNX_BYTES, check_model_bytes
from fmnist_deploy.trust import Trust, require_trusted

BATCH_SIZES = (1, 2, 7, 100, 10_000)
GOLDEN_HINT = "pass --golden PATH (the golden.npz fmnist-export wrote beside the file)"
WEIGHTS_HINT = "pass --weights PATH (the fmnist_mlp.pt the file was exported from)"


@dataclass(frozen=True)
class EagerReference:
    """The full test set with eager PyTorch's logits for it."""

    images: np.ndarray  # (10000, 28, 28) uint8
    labels: np.ndarray  # (10000,) int64
    logits: np.ndarray  # (10000, 10) float32


@dataclass(frozen=True)
class References:
    """What the gate compares a file against; each one absent comes with the reason and the option that supplies it."""

    golden: Golden | None = None
    test_set: EagerReference | None = None
    weights_sha256: str | None = None
    golden_missing: str = f"no golden vectors given; {GOLDEN_HINT}"
    test_set_missing: str = f"no weights given; {WEIGHTS_HINT} to compare with eager PyTorch on the test set"
    trust_native_code: bool = False  # load every code-carrying file (TorchScript, .pt2, AOTInductor) unchecked
    trust: Trust = Trust()  # else: what makes such a file trusted (a signature, a pinned sha256, the package)


def report_path(model_path: Path) -> Path:
    """Where `fmnist-export` keeps a file's gate report: `<file>.gate.json`."""
    return model_path.with_name(model_path.name + ".gate.json")


def write_report(path: Path, report: GateReport) -> None:
    """The report as JSON, written atomically."""
    write_text_atomic(path, json.dumps(report.to_dict(), indent=2) + "\n")


def compare(logits: np.ndarray, probs: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Parity statistics of one backend's output against reference logits (pure)."""
    return {
        "max_abs_logit_diff": float(np.abs(logits.astype(np.float64) - reference).max()),
        "max_prob_sum_error": float(np.abs(probs.astype(np.float64).sum(axis=1) - 1.0).max()),
        "argmax_agreement": float((logits.argmax(axis=1) == reference.argmax(axis=1)).mean()),
    }


def _parity(report: GateReport, name: str, stats: dict[str, float], int8: bool, hint: str) -> None:
    detail = (
        f"max |dlogit| {stats['max_abs_logit_diff']:.3g}{'' if int8 else f' (limit {LOGIT_TOLERANCE:g})'}, "
        f"max |sum(p)-1| {stats['max_prob_sum_error']:.3g}, argmax agreement {stats['argmax_agreement']:.2%}"
    )
    if int8:  # quantised weights cannot match to 1e-5; accuracy is checked instead
        report.add(name, stats["max_prob_sum_error"] <= INT8_PROB_SUM_TOLERANCE, detail + " (int8: accuracy gated)")
        return
    ok = (
        stats["max_abs_logit_diff"] <= LOGIT_TOLERANCE
        and stats["max_prob_sum_error"] <= PROB_SUM_TOLERANCE
        and stats["argmax_agreement"] == 1.0
    )
    report.add(name, ok, detail + ("" if ok else hint))


def _metadata_checks(
    report: GateReport, path: Path, fmt: str, meta: dict[str, Any], weights_sha256: str | None
) -> bool:
    """Metadata, sidecar and weights checks; returns whether the file comes from the reference weights."""
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    report.add(
        "metadata",
        not missing and meta.get("contract_version") == CONTRACT_VERSION and meta.get("format") == fmt,
        f"missing {missing}"
        if missing
        else f"contract {meta.get('contract_version')}, format {meta.get('format')}, "
        f"{len(meta.get('class_names', []))} class names",
    )
    try:
        side, missing_note = sidecar_check(path)
    except IntegrityError as exc:  # unreadable, or the file's sha256 differs from the sidecar's
        report.add("sidecar", False, first_line(exc))
    else:
        if missing_note is not None:
            report.add("sidecar", False, missing_note)
        else:
            same = {k: v for k, v in side.items() if k not in ("file", "file_sha256")} == meta
            report.add(
                "sidecar",
                same,
                f"{sidecar_path(path).name}: metadata {'equal' if same else 'DIFFERS from the file'}, "
                "file sha256 matches",
            )
    if weights_sha256 is None:
        report.not_run.append(f"weights: {WEIGHTS_HINT}")
        return True
    same_weights = meta.get("weights_sha256") == weights_sha256
    report.add(
        "weights",
        same_weights,
        f"built from weights {str(meta.get('weights_sha256'))[:12]}…, --weights are {weights_sha256[:12]}…"
        + ("" if same_weights else f": the file was exported from other weights; {WEIGHTS_HINT}"),
    )
    return same_weights


def _run_checks(report: GateReport, label: str, run: Runner, refs: References, int8: bool, hint: str) -> None:
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
    report.add(
        f"{label}:batch_sizes",
        all(v == "ok" for v in outcome.values()),
        ", ".join(f"{n}:{v}" for n, v in outcome.items()),
    )
    if refs.golden is not None:
        _parity(report, f"{label}:golden_parity", compare(*run(refs.golden.images), refs.golden.logits), int8, hint)
    if refs.test_set is not None:
        test_set = refs.test_set
        logits, probs = run(test_set.images)
        _parity(report, f"{label}:test_set_parity", compare(logits, probs, test_set.logits), int8, hint)
        correct = int((logits.argmax(1) == test_set.labels).sum())
        eager_correct = int((test_set.logits.argmax(1) == test_set.labels).sum())
        n = len(test_set.labels)
        accuracy, eager = correct / n, eager_correct / n
        # from image counts: (eager - accuracy) * 100 makes a drop of exactly 50 in 10 000 0.5000000000000004 points
        drop_points = (eager_correct - correct) * 100 / n
        limit = INT8_MAX_ACCURACY_DROP_POINTS if int8 else 0.0
        report.add(
            f"{label}:accuracy",
            drop_points <= limit,
            f"{accuracy:.4f} on {len(test_set.labels)} test images (eager {eager:.4f}, drop {drop_points:.2f} "
            f"points, limit {limit:g})" + ("" if drop_points <= limit else hint),
        )


def verify(
    path: Path,
    refs: References,
    *,
    expected_opset: int | None = None,
    raise_on_failure: bool = True,
) -> GateReport:
    """Check one exported file against the contract and `refs`; raise GateError after recording every failure.

    Writes nothing (`write_report` saves a report where one is wanted).
    """
    path = Path(path)
    report = GateReport(file=path.name, format="unknown", machine=environment())
    try:
        report.format = format_of(path)
    except ModelError as exc:
        report.add("format", False, str(exc))
    if report.format in FORMATS:
        _verify_file(report, path, FORMATS[report.format], expected_opset, refs)
    if raise_on_failure and not report.passed:
        raise GateError(report)
    return report


def _verify_file(
    report: GateReport, path: Path, fmt: ExportFormat, expected_opset: int | None, refs: References
) -> None:
    if not resolve(path).is_file():
        report.add("loads", False, "no such file")
        return
    as_data = None  # an ONNX graph off the contract: its structure is still checked (as data), never run
    kind = KIND[fmt.NAME]
    if kind.bytes_kind.name in ("onnx", "ort"):  # .onnx, .int8.onnx and the ONNX Runtime format
        try:  # checked as data first, as the runtime does
            check_model_bytes(path, read_current(path, MAX_ONNX_BYTES, "model file"))
        except IntegrityError as exc:
            as_data = first_line(exc, limit=400)
    if kind.code:
        try:  # before torch reads anything of a file that can run code, and its archive's sizes
            data = read_current(path, MAX_MODEL_BYTES, "model file")
            trust = Trust(code=True) if refs.trust_native_code else refs.trust
            require_trusted(path, data, fmt.NAME, trust)
            if data[:4] == b"PK\x03\x04":
                check_zip(data, path)
            if fmt.NAME == "pt2":
                inspect_pt2(path, data)
        except IntegrityError as exc:
            report.add("loads", False, first_line(exc, limit=400))
            return
    current = resolve(path)  # the new file of an export committed but still renaming (fmnist_deploy.exportset)
    if not kind.code:
        _verify_loaded(report, path, current, fmt, expected_opset, refs, as_data)
        return
    # A file that runs code is loaded from a private copy of the very bytes whose trust was just checked:
    # a file swapped after the check (in a folder others can write) is never what runs.
    with tempfile.TemporaryDirectory(prefix="fmnist-gate-") as private:
        checked = Path(private) / current.name
        checked.write_bytes(data)
        _verify_loaded(report, path, checked, fmt, expected_opset, refs, as_data)


def _verify_loaded(
    report: GateReport,
    path: Path,
    readable: Path,
    fmt: ExportFormat,
    expected_opset: int | None,
    refs: References,
    as_data: str | None,
) -> None:
    """The gate's checks of a file its format's loader reads from `readable` (for `path`, whose sidecar counts)."""
    kind = KIND[fmt.NAME]
    try:
        meta = fmt.read_metadata(readable)
        # Without an explicit request, the opset the file claims is the one it must have.
        structure = fmt.structure_checks(readable, expected_opset if expected_opset is not None else meta.get("opset"))
        runners = fmt.runners(readable) if as_data is None else {}
    except Exception as exc:  # noqa: BLE001 - any loader failure means the file is unusable; it is reported, not hidden
        report.add("loads", False, f"{type(exc).__name__}: {first_line(exc)}")
        return
    report.add("loads", True, f"{readable.stat().st_size} bytes")
    # a kind made from another kind's file carries that file's metadata (int8, ort: their format is onnx)
    same_weights = _metadata_checks(report, path, kind.source or kind.name, meta, refs.weights_sha256)
    report.checks.extend(structure)
    if as_data is not None:
        report.add("graph_as_data", False, f"{as_data}; not run")
    hint = "" if same_weights else " (compared with other weights than the file's: see the weights check)"
    if refs.golden is None:
        report.add("reference:golden", False, refs.golden_missing)
    elif meta.get("weights_sha256") != refs.golden.weights_sha256:
        report.add(
            "reference:golden",
            False,
            f"golden vectors are of weights {refs.golden.weights_sha256[:12]}…, the file of "
            f"{str(meta.get('weights_sha256'))[:12]}…; {GOLDEN_HINT}",
        )
    else:
        report.add("reference:golden", True, f"{len(refs.golden.images)} golden images, {refs.golden.reference}")
    if refs.test_set is None:
        report.not_run.append(f"test-set parity and accuracy: {refs.test_set_missing}")
    if refs.golden is None and refs.test_set is None:
        report.add("values", False, f"no reference to compare the file's outputs with; {GOLDEN_HINT} or {WEIGHTS_HINT}")
    int8 = meta.get("precision") == "int8"
    for label, run in runners.items():
        try:
            _run_checks(report, label, run, refs, int8, hint)
        except Exception as exc:  # noqa: BLE001 - a runtime failure is a gate failure, reported with its message
            report.add(f"{label}:runs", False, f"{type(exc).__name__}: {first_line(exc)}")
