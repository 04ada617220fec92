"""Typed entry points: export a weights file to the requested formats, gate every file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmnist_deploy.atomic import check_writable, remove_stale_temporaries, write_text_atomic
from fmnist_deploy.contract import GOLDEN_JSON_NAME, GOLDEN_NAME, INT8_ONNX_NAME, SAMPLES_DIR, STEM, sha256_file
from fmnist_deploy.export import golden as golden_mod
from fmnist_deploy.export import onnx_format
from fmnist_deploy.export.checks import ExportError, GateError, GateReport
from fmnist_deploy.export.formats import FORMATS
from fmnist_deploy.export.gate import GOLDEN_HINT, EagerReference, References, report_path, verify, write_report
from fmnist_deploy.export.metadata import build_metadata, write_sidecar
from fmnist_deploy.export.quantize import SETTINGS as INT8_SETTINGS
from fmnist_deploy.export.quantize import quantize
from fmnist_deploy.export.wrapper import Deployable, from_weights
from fmnist_deploy.training.checkpoint import Weights, load_weights
from fmnist_deploy.training.data import DataMissing, FashionMNIST
from fmnist_deploy.training.data import load as load_data

ALL_FORMATS = tuple(name for name, fmt in FORMATS.items() if fmt.PORTABLE)  # --format all
NO_DATA = "the Fashion-MNIST test set is not on this machine; run `make data` or pass --data-dir"


@dataclass(frozen=True)
class Source:
    """The weights being exported and the references the gate checks against."""

    weights: Weights
    weights_sha256: str
    module: Deployable
    golden: golden_mod.Golden
    test_set: EagerReference | None

    @property
    def references(self) -> References:
        """What every exported file of these weights is gated against."""
        return References(
            golden=self.golden,
            test_set=self.test_set,
            weights_sha256=self.weights_sha256,
            test_set_missing=NO_DATA,
            trust_native_code=True,  # the files were built by this process from these weights
        )


@torch.no_grad()
def eager_outputs(module: Deployable, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eager PyTorch's (logits, probabilities) for uint8 images, in one batch."""
    logits, probs = module(torch.from_numpy(images))
    return logits.numpy(), probs.numpy()


def try_load_test_set(data_dir: Path | None = None) -> FashionMNIST | None:
    """The data set if it is on this machine (never downloads); None if there is none.

    A copy that is there but damaged is an error, never a silent skip of the test-set checks.
    """
    try:
        return load_data(data_dir, download=False)
    except DataMissing:
        if data_dir is not None:
            raise
        return None


def eager_reference(weights: Weights, data: FashionMNIST) -> EagerReference:
    """Eager PyTorch's logits for the whole test set: the gate's test-set reference."""
    images = data.test_images.numpy()
    return EagerReference(images, data.test_labels.numpy(), eager_outputs(from_weights(weights), images)[0])


def make_golden(weights: Weights, weights_sha256: str, data: FashionMNIST) -> golden_mod.Golden:
    """The golden images of the test set with their float64 reference outputs."""
    images, labels = data.test_images.numpy(), data.test_labels.numpy()
    idx = golden_mod.select(labels)
    state = {k: v.double().numpy() for k, v in weights.model.items()}
    logits, probs = golden_mod.reference_outputs(state, weights.recipe.norm_mean, weights.recipe.norm_std, images[idx])
    return golden_mod.Golden(images[idx], labels[idx], idx, logits, probs, weights_sha256, tuple(weights.class_names))


def prepare(weights_path: Path, out_dir: Path, data: FashionMNIST | None) -> Source:
    """Load the weights, compute the references, (re)write golden.npz and the samples when the data is present."""
    weights = load_weights(weights_path)
    weights_sha = sha256_file(weights_path)
    module = from_weights(weights)
    golden_path = out_dir / GOLDEN_NAME
    test_set = None
    if data is not None:
        test_set = eager_reference(weights, data)
        golden = make_golden(weights, weights_sha, data)
        golden_mod.save(golden_path, golden)
        write_text_atomic(out_dir / GOLDEN_JSON_NAME, golden_mod.to_json(golden))
        golden_mod.write_samples(
            out_dir / SAMPLES_DIR, data.test_images.numpy(), data.test_labels.numpy(), tuple(weights.class_names)
        )
    elif golden_path.is_file():
        golden = golden_mod.load(golden_path)
        if golden.weights_sha256 != weights_sha:
            raise ExportError(
                f"{golden_path} belongs to other weights and the test set is absent to rebuild it; run `make data`"
            )
    else:
        raise ExportError(f"no test set to build {golden_path}; run `make data` or pass --data-dir")
    return Source(weights, weights_sha, module, golden, test_set)


@dataclass(frozen=True)
class Exported:
    """One written file and its gate report."""

    path: Path
    report: GateReport


def export_format(source: Source, fmt: str, out_dir: Path, *, opset: int | None = None) -> Path:
    """Write one format and its sidecar; returns the model path (not yet gated)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    exporter = FORMATS[fmt]
    path = out_dir / f"{STEM}{exporter.SUFFIX}"
    meta = exporter.export(source.module, path, build_metadata(source.weights, source.weights_sha256), opset=opset)
    write_sidecar(path, meta)
    return path


def export_int8(fp32_path: Path) -> Path:
    """The int8 ONNX file beside the fp32 one, described as the fp32 file plus its quantisation."""
    path = fp32_path.with_name(INT8_ONNX_NAME)
    meta = {**onnx_format.read_metadata(fp32_path), "precision": "int8", "quantization": INT8_SETTINGS}
    quantize(fp32_path, path, meta)
    write_sidecar(path, meta)
    return path


def run_export(
    weights_path: Path,
    formats: tuple[str, ...],
    out_dir: Path,
    *,
    opset: int = onnx_format.DEFAULT_OPSET,
    int8: bool = False,
    data_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Exported]:
    """Export, then gate every file and write its report as `<file>.gate.json`; raise GateError if any file fails.

    `progress` is called with a short description before each step (load, each format, each gate).
    """
    if int8 and "onnx" not in formats:
        raise ExportError("--quantize int8 quantises the ONNX file: use it with --format onnx or all")
    step = progress or (lambda _: None)
    step(f"loading {weights_path} and the test set")
    data = try_load_test_set(data_dir)
    load_weights(weights_path)  # every input is checked before anything is written
    check_writable(out_dir)  # a read-only or full output folder fails now, in one line
    remove_stale_temporaries(out_dir)
    source = prepare(weights_path, out_dir, data)
    paths = []
    for fmt in formats:
        step(f"exporting {fmt}")
        paths.append(export_format(source, fmt, out_dir, opset=opset))
    if int8:
        step("quantising the ONNX file to int8")
        paths.append(export_int8(paths[formats.index("onnx")]))
    results = []
    for path in paths:
        step(f"gating {path.name}")
        expected = opset if path.suffix == onnx_format.SUFFIX else None
        report = verify(path, source.references, expected_opset=expected, raise_on_failure=False)
        results.append(Exported(path, report))
    for result in results:  # every verdict is known before any report is written
        write_report(report_path(result.path), result.report)
    failed = [r.report for r in results if not r.report.passed]
    if failed:
        raise GateError(*failed)
    return results


def verify_file(
    path: Path,
    *,
    weights_path: Path | None,
    golden_path: Path | None = None,
    opset: int | None = None,
    data_dir: Path | None = None,
    trust_native_code: bool = False,
) -> GateReport:
    """`fmnist-export --verify`: gate an existing file against its golden vectors and, given them, its weights.

    A file whose loading runs native code (an AOTInductor package) is only loaded with `trust_native_code`.

    `golden_path` defaults to the golden.npz beside the file; a reference that is absent
    is a named check (golden) or a listed "not run" (test set), never silently skipped.
    """
    if weights_path is not None and not weights_path.is_file():
        raise ExportError(f"{weights_path}: no such weights file")
    given_golden = golden_path is not None
    golden_path = golden_path if given_golden else path.parent / GOLDEN_NAME
    golden, golden_missing = None, ""
    if golden_path.is_file():
        try:
            golden = golden_mod.load(golden_path)
        except golden_mod.GoldenError as exc:
            golden_missing = f"{exc}; {GOLDEN_HINT}"
    else:
        golden_missing = f"{golden_path}: no such file; {GOLDEN_HINT}"
    test_set, weights_sha = None, None
    test_set_missing = References.test_set_missing
    if weights_path is not None:
        weights_sha = sha256_file(weights_path)
        data = try_load_test_set(data_dir)
        if data is None:
            test_set_missing = NO_DATA
        else:
            test_set = eager_reference(load_weights(weights_path), data)
    refs = References(
        golden=golden,
        test_set=test_set,
        weights_sha256=weights_sha,
        golden_missing=golden_missing or References.golden_missing,
        test_set_missing=test_set_missing,
        trust_native_code=trust_native_code,
    )
    return verify(path, refs, expected_opset=opset, raise_on_failure=False)
