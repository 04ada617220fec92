"""Typed entry points: export a weights file to the requested formats, gate every file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from export import golden as golden_mod
from export import onnx_format, pt2_format, torchscript_format
from export.checks import ExportError, GateError, GateReport
from export.contract import build_metadata, sha256_file, write_sidecar
from export.gate import EagerReference, verify
from export.quantize import SETTINGS as INT8_SETTINGS
from export.quantize import quantize
from export.wrapper import Deployable, from_weights
from training.checkpoint import Weights, load_weights
from training.data import DataMissing, FashionMNIST
from training.data import load as load_data

STEM = "fmnist_mlp"
ALL_FORMATS = ("onnx", "torchscript", "pt2")
GOLDEN_NAME = "golden.npz"
SAMPLES_DIR = "samples"  # a few real test images as PNG, for fmnist-predict examples


@dataclass(frozen=True)
class Source:
    """The weights being exported and the references the gate checks against."""

    weights: Weights
    weights_sha256: str
    module: Deployable
    golden: golden_mod.Golden
    test_set: EagerReference | None


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


def prepare(weights_path: Path, out_dir: Path, data: FashionMNIST | None) -> Source:
    """Load the weights, compute eager references, (re)write golden.npz when the data is present."""
    weights = load_weights(weights_path)
    weights_sha = sha256_file(weights_path)
    module = from_weights(weights)
    golden_path = out_dir / GOLDEN_NAME
    test_set = None
    if data is not None:
        images, labels = data.test_images.numpy(), data.test_labels.numpy()
        test_set = EagerReference(images, labels, eager_outputs(module, images)[0])
        idx = golden_mod.select(labels)
        logits, probs = eager_outputs(module, images[idx])
        golden = golden_mod.Golden(images[idx], labels[idx], idx, logits, probs, weights_sha, tuple(weights.class_names))
        golden_mod.save(golden_path, golden)
        golden_mod.write_samples(out_dir / SAMPLES_DIR, images, labels, tuple(weights.class_names))
    elif golden_path.is_file():
        golden = golden_mod.load(golden_path)
        if golden.weights_sha256 != weights_sha:
            raise ExportError(f"{golden_path} belongs to other weights and the test set is absent to rebuild it; run `make data`")
    else:
        raise ExportError(f"no test set to build {golden_path}; run `make data` or pass --data-dir")
    return Source(weights, weights_sha, module, golden, test_set)


@dataclass(frozen=True)
class Exported:
    path: Path
    report: GateReport


def export_format(source: Source, fmt: str, out_dir: Path, *, opset: int = onnx_format.DEFAULT_OPSET) -> Path:
    """Write one format and its sidecar; returns the model path (not yet gated)."""
    if fmt == "onnx":
        path = out_dir / f"{STEM}{onnx_format.SUFFIX}"
        meta = build_metadata(source.weights, source.weights_sha256, "onnx", opset=opset,
                              ir_version=onnx_format.ir_version_for(opset))
        onnx_format.export(source.module, path, meta, opset=opset)
    elif fmt == "torchscript":
        path = out_dir / f"{STEM}{torchscript_format.SUFFIX}"
        meta = build_metadata(source.weights, source.weights_sha256, "torchscript")
        torchscript_format.export(source.module, path, meta)
    elif fmt == "pt2":
        path = out_dir / f"{STEM}{pt2_format.SUFFIX}"
        meta = build_metadata(source.weights, source.weights_sha256, "pt2")
        pt2_format.export(source.module, path, meta)
    else:
        raise ExportError(f"unknown format {fmt!r}; expected one of {', '.join(ALL_FORMATS)}")
    write_sidecar(path, meta)
    return path


def export_int8(source: Source, fp32_path: Path, opset: int) -> Path:
    path = fp32_path.with_name(f"{STEM}.int8{onnx_format.SUFFIX}")
    meta = build_metadata(source.weights, source.weights_sha256, "onnx", precision="int8", opset=opset,
                          ir_version=onnx_format.ir_version_for(opset))
    meta["quantization"] = INT8_SETTINGS
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
) -> list[Exported]:
    """Export, then gate every file; raise GateError (with all reports) if any file fails."""
    if int8 and "onnx" not in formats:
        raise ExportError("--quantize int8 quantises the ONNX file: use it with --format onnx or all")
    out_dir.mkdir(parents=True, exist_ok=True)
    source = prepare(weights_path, out_dir, try_load_test_set(data_dir))
    paths = [export_format(source, fmt, out_dir, opset=opset) for fmt in formats]
    if int8:
        paths.append(export_int8(source, paths[formats.index("onnx")], opset))
    results = []
    for path in paths:
        report = verify(path, expected_opset=opset if path.suffix == onnx_format.SUFFIX else None, golden=source.golden,
                        test_set=source.test_set, weights_sha256=source.weights_sha256, raise_on_failure=False)
        results.append(Exported(path, report))
    failed = [r.report for r in results if not r.report.passed]
    if failed:
        raise GateError(*failed)
    return results


def verify_file(path: Path, *, weights_path: Path | None, opset: int | None, data_dir: Path | None = None) -> GateReport:
    """`fmnist-export --verify`: gate an existing file against the weights it claims to come from."""
    golden_path = path.parent / GOLDEN_NAME
    test_set = None
    weights_sha = None
    golden = golden_mod.load(golden_path) if golden_path.is_file() else None
    if weights_path is not None:
        weights_sha = sha256_file(weights_path)
        data = try_load_test_set(data_dir)
        if data is not None:
            module = from_weights(load_weights(weights_path))
            images = data.test_images.numpy()
            test_set = EagerReference(images, data.test_labels.numpy(), eager_outputs(module, images)[0])
    return verify(path, expected_opset=opset, golden=golden, test_set=test_set, weights_sha256=weights_sha)
