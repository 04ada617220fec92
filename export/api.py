"""Typed entry points: export a weights file to the requested formats, gate every file."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmnist_deploy.atomic import check_writable, remove_stale_temporaries, write_text_atomic
from fmnist_deploy.contract import GOLDEN_JSON_NAME, GOLDEN_NAME, SAMPLES_DIR, sha256_file
from fmnist_deploy.export import golden as golden_mod
from fmnist_deploy.export import onnx_format
from fmnist_deploy.export.checks import ExportError, GateError, GateReport
from fmnist_deploy.export.formats import FORMATS
from fmnist_deploy.export.gate import GOLDEN_HINT, EagerReference, References, report_path, verify, write_report
from fmnist_deploy.export.metadata import build_metadata, write_sidecar
from fmnist_deploy.export.wrapper import Deployable, from_weights
from fmnist_deploy.exportset import commit, new_staging, recover, resolve
from fmnist_deploy.kinds import KIND, exported_kinds
from fmnist_deploy.training.checkpoint import Weights, load_weights
from fmnist_deploy.training.data import DataMissing, FashionMNIST
from fmnist_deploy.training.data import load as load_data
from fmnist_deploy.trust import MANIFEST_NAME, Trust, manifest_text, sign_file

# --format all: the portable kinds made from the weights whose bytes re-export identically
ALL_FORMATS = tuple(k.name for k in exported_kinds() if k.portable and k.reproducible and k.source is None)
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


def prepare(weights_path: Path, out_dir: Path, data: FashionMNIST | None, staging: Path | None = None) -> Source:
    """Load the weights, compute the references, (re)write golden.npz and the samples when the data is present.

    The golden vectors are written into `staging` when given (they are part of the export's set, see
    `fmnist_deploy.exportset`), the sample images into `out_dir`.
    """
    weights = load_weights(weights_path)
    weights_sha = sha256_file(weights_path)
    module = from_weights(weights)
    golden_path = resolve(out_dir / GOLDEN_NAME)
    test_set = None
    if data is not None:
        test_set = eager_reference(weights, data)
        golden = make_golden(weights, weights_sha, data)
        golden_dir = staging if staging is not None else out_dir
        golden_mod.save(golden_dir / GOLDEN_NAME, golden)
        write_text_atomic(golden_dir / GOLDEN_JSON_NAME, golden_mod.to_json(golden))
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


def export_format(
    source: Source, fmt: str, out_dir: Path, *, opset: int | None = None, made: dict[str, Path] | None = None
) -> Path:
    """Write one format and its sidecar; returns the model path (not yet gated).

    A kind made from another kind's file (int8, ort: `fmnist_deploy.kinds`) is derived from that
    file, which `made` (kind -> path) must hold.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    exporter, kind = FORMATS[fmt], KIND[fmt]
    path = out_dir / kind.file_name
    if kind.source is None:
        meta = exporter.export(source.module, path, build_metadata(source.weights, source.weights_sha256), opset=opset)
    else:
        meta = exporter.derive((made or {})[kind.source], path)  # type: ignore[attr-defined]
    write_sidecar(path, meta)
    return path


def with_sources(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The formats in the order they are written: each derived kind after the kind it is made from."""
    plan: list[str] = []
    for fmt in formats:
        source = KIND[fmt].source if fmt in KIND else None
        if source is not None and source not in plan:
            plan.append(source)
        if fmt not in plan:
            plan.append(fmt)
    return tuple(plan)


def run_export(
    weights_path: Path,
    formats: tuple[str, ...],
    out_dir: Path,
    *,
    opset: int = onnx_format.DEFAULT_OPSET,
    int8: bool = False,
    data_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
    sign_key: Path | None = None,
) -> list[Exported]:
    """Export, then gate every file and write its report as `<file>.gate.json`; raise GateError if any file fails.

    The files are written and gated in a staging folder and replace the previous set in `out_dir`
    as one change only when every file passed (`fmnist_deploy.exportset`): a killed or failed
    export leaves the previous set whole. With `sign_key`, every model file is signed (`<file>.sig`).

    `progress` is called with a short description before each step (load, each format, each gate).
    """
    folders = [f for f in formats if f in KIND and KIND[f].folder]
    if folders:  # written into the output folder itself, on its own: fmnist-export --format NAME --output FOLDER
        raise ExportError(
            f"{', '.join(folders)} is a folder, not a file of the export set; use fmnist-export "
            f"--format {folders[0]} --output FOLDER"
        )
    if int8 and "onnx" not in formats:
        raise ExportError("--quantize int8 quantises the ONNX file: use it with --format onnx or all")
    step = progress or (lambda _: None)
    step(f"loading {weights_path} and the test set")
    data = try_load_test_set(data_dir)
    load_weights(weights_path)  # every input is checked before anything is written
    check_writable(out_dir)  # a read-only or full output folder fails now, in one line
    remove_stale_temporaries(out_dir)
    recover(out_dir)  # finish an export killed after its commit point; drop what uncommitted ones left
    staging = new_staging(out_dir)
    try:
        results = _export_staged(weights_path, formats, out_dir, staging, opset, int8, data, sign_key, step)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # committed: already empty; failed: the old set stays
    return results


def _export_staged(
    weights_path: Path,
    formats: tuple[str, ...],
    out_dir: Path,
    staging: Path,
    opset: int,
    int8: bool,
    data: FashionMNIST | None,
    sign_key: Path | None,
    step: Callable[[str], None],
) -> list[Exported]:
    """Write and gate the whole set in `staging`; only when every file passed, replace the set in `out_dir`."""
    source = prepare(weights_path, out_dir, data, staging)
    made: dict[str, Path] = {}
    for fmt in with_sources(formats + (("int8",) if int8 else ())):
        step(f"exporting {fmt}")
        made[fmt] = export_format(source, fmt, staging, opset=opset, made=made)
    paths = list(made.values())
    results = []
    for path in paths:
        step(f"gating {path.name}")
        expected = opset if path.suffix == onnx_format.SUFFIX else None  # .onnx and .int8.onnx
        report = verify(path, source.references, expected_opset=expected, raise_on_failure=False)
        results.append(Exported(path, report))
    failed = [r.report for r in results if not r.report.passed]
    if failed:  # nothing is committed: every file of the previous export stays as it was
        raise GateError(*failed)
    for result in results:
        write_report(report_path(result.path), result.report)
    if sign_key is not None:
        step(f"signing with {sign_key}")
        for path in paths:
            sign_file(path, sign_key)
    write_text_atomic(staging / MANIFEST_NAME, manifest_text(_code_files(out_dir, staging)))
    names = sorted(p.name for p in staging.iterdir() if p.is_file())
    step(f"replacing the set of {len(names)} files in {out_dir}")
    commit(staging, out_dir, names)
    return [Exported(out_dir / r.path.name, r.report) for r in results]


def _code_files(out_dir: Path, staging: Path) -> dict[str, str]:
    """sha256 of each code-carrying model file the set will hold: the new ones, and the old ones kept."""
    files = {}
    for kind in exported_kinds():
        if not (kind.code and kind.packaged):
            continue
        name = kind.file_name
        current = staging / name if (staging / name).is_file() else resolve(out_dir / name)
        if current.is_file():
            files[name] = sha256_file(current)
    return files


def verify_file(
    path: Path,
    *,
    weights_path: Path | None,
    golden_path: Path | None = None,
    opset: int | None = None,
    data_dir: Path | None = None,
    trust_native_code: bool = False,
    trust: Trust | None = None,
) -> GateReport:
    """`fmnist-export --verify`: gate an existing file against its golden vectors and, given them, its weights.

    A file whose loading runs code (TorchScript, .pt2, an AOTInductor package) is only loaded when `trust`
    says so (`fmnist_deploy.trust`) or with `trust_native_code`.

    `golden_path` defaults to the golden.npz beside the file; a reference that is absent
    is a named check (golden) or a listed "not run" (test set), never silently skipped.
    """
    if weights_path is not None and not weights_path.is_file():
        raise ExportError(f"{weights_path}: no such weights file")
    given_golden = golden_path is not None
    golden_path = golden_path if given_golden else path.parent / GOLDEN_NAME
    golden, golden_missing = None, ""
    if resolve(golden_path).is_file():
        try:
            golden = golden_mod.load(resolve(golden_path))
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
        trust=trust or Trust(),
    )
    return verify(path, refs, expected_opset=opset, raise_on_failure=False)
